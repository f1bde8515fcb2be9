import Foundation
import Testing

/// Boots the default Linux guest (guest/build-image) through `swiftlet run`.
/// Where guest CPL0 is emulated (kvm_pvm) each boot takes 15-20 s, so
/// these are few and run one at a time; on VT-x/AMD-V hosts they take seconds.
@Suite("Default Linux guest", .serialized,
       .enabled(if: KitGuest.shouldRun && (LinuxGuest.isBuilt || KitGuest.isCI), LinuxGuest.skipReason))
struct LinuxGuestTests {
    @Test("boots cold (--no-snapshot) and runs a command through the agent: only its output on stdout; --verbose shows the console on stderr",
          .timeLimit(.minutes(5)))
    func bootsToMarker() throws {
        let result = try ProcessTests.run("swiftlet", ["run", "--no-snapshot", "--verbose", "--", "echo", "hello from the guest"])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout == "hello from the guest\n", "stdout: \(result.stdout.suffix(2000))")
        #expect(result.stderr.contains("SWIFTLET-GUEST-READY"), "the console, on stderr with --verbose: \(result.stderr.suffix(2000))")
    }

    @Test("with 2 vCPUs and 256 MiB the guest sees both CPUs and the memory", .timeLimit(.minutes(5)))
    func smpAndMemory() throws {
        let result = try ProcessTests.run("swiftlet", [
            "run", "--cpus", "2", "--memory", "256M", "--",
            "sh", "-c", "echo NPROC=$(nproc); grep MemTotal /proc/meminfo",
        ])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("NPROC=2"), "console: \(result.stdout.suffix(2000))")
        // MemTotal is RAM less what the kernel keeps for itself: between 200 and 256 MiB.
        let kilobytes = result.stdout.split(whereSeparator: \.isNewline)
            .first { $0.hasPrefix("MemTotal:") }
            .flatMap { $0.split(separator: " ").dropFirst().first }
            .flatMap { Int($0) }
        #expect(kilobytes.map { (200 * 1024...256 * 1024).contains($0) } == true, "MemTotal: \(String(describing: kilobytes))")
    }

    @Test("swiftlet run -- false exits with the command's status 1", .timeLimit(.minutes(5)))
    func commandStatus() throws {
        let result = try ProcessTests.run("swiftlet", ["run", "--", "false"])
        #expect(result.status == 1, "stderr: \(result.stderr)")
        #expect(result.stdout.isEmpty, "no console and no markers: \(result.stdout.suffix(2000))")
    }

    @Test("stdin reaches the command, stdout and stderr stay apart, and a signal death is 128+N", .timeLimit(.minutes(5)))
    func stdinOutputAndSignals() throws {
        var input = [UInt8](repeating: 0, count: 256 * 1024)
        for index in input.indices { input[index] = UInt8(truncatingIfNeeded: index &* 7 &+ 3) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ProcessTests.binary("swiftlet"))
        process.arguments = ["run", "--", "sh", "-c", "md5sum; echo to-stderr >&2; kill -TERM $$"]
        let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        let bytes = Data(input)
        let writer = Thread {
            try? stdin.fileHandleForWriting.write(contentsOf: bytes)
            try? stdin.fileHandleForWriting.close()
        }
        writer.start()
        let out = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let err = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        // The host's md5sum of the same bytes, in the same format as busybox's.
        let local = Process()
        local.executableURL = URL(fileURLWithPath: "/usr/bin/md5sum")
        let localIn = Pipe(), localOut = Pipe()
        local.standardInput = localIn
        local.standardOutput = localOut
        try local.run()
        try localIn.fileHandleForWriting.write(contentsOf: Data(input))
        try localIn.fileHandleForWriting.close()
        let expected = String(decoding: localOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        local.waitUntilExit()
        #expect(out == expected && out.hasSuffix("  -\n"), "stdout: \(out), host md5sum: \(expected)")
        #expect(err.contains("to-stderr") && !out.contains("to-stderr"), "stderr: \(err)")
        #expect(process.terminationStatus == 128 + SIGTERM, "stderr: \(err)")
    }
}

enum LinuxGuest {
    static var isBuilt: Bool {
        FileManager.default.fileExists(atPath: KitGuest.packageRoot.appendingPathComponent(".cache/guest/current/vmlinux").path)
    }

    /// `guest/build-image --print-path`: the image for this tree's guest/
    /// inputs (built first if needed).
    static func imagePath() throws -> String {
        let process = Process()
        process.executableURL = KitGuest.packageRoot.appendingPathComponent("guest/build-image")
        process.arguments = ["--print-path"]
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let path = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let messages = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw KitGuest.KitError(message: "guest/build-image failed:\n\(messages)") }
        return path.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static let skipReason: Comment = "needs /dev/kvm and the default guest (guest/build-image builds it; scripts/test does); required under CI=true"
}

/// The control API's graceful shutdown on the default Linux guest: the
/// VMM's ACPI power button (a Generic Event Device notifying PNP0C0C) makes
/// the guest's /init power off.
/// In the same (serialized) suite as the other Linux boots, so that they do
/// not run at the same time: each is slow where guest CPL0 is emulated.
extension LinuxGuestTests {
    @Test("control API: pause and resume a 2-vCPU guest; Shutdown presses the ACPI power button and the guest powers off", .timeLimit(.minutes(8)))
    func powerButton() throws {
        // The image built from this tree's guest/ (`current` may point at another tree's build).
        let guest = URL(fileURLWithPath: try LinuxGuest.imagePath())
        let config = (try? String(contentsOf: guest.appendingPathComponent("config"), encoding: .utf8)) ?? ""
        try #require(config.contains("CONFIG_ACPI_BUTTON=y"), "the default guest at \(guest.path) has no ACPI power button driver")
        let cmdline = ((try? String(contentsOf: guest.appendingPathComponent("cmdline"), encoding: .utf8)) ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let vm = try ControlAPIProcessTests.VMMProcess([
            "--kernel", guest.appendingPathComponent("vmlinux").path,
            "--initrd", guest.appendingPathComponent("initramfs.cpio").path,
            "--cmdline", cmdline, "--memory", "256M", "--cpus", "2",
        ], name: "linux")
        try #require(vm.waitForSerial(seconds: 300) { $0.contains("SWIFTLET-GUEST-READY") }, "console: \(vm.serial.suffix(2000))")
        // The watcher starts just before the marker; give it a moment to open the event device.
        usleep(1_000_000)

        // Paused: no vCPU enters the guest, so no exits are counted.
        #expect(try vm.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        func totalExits() throws -> Int? {
            (ControlAPIProcessTests.json(try vm.request("GET", "/metrics").body)["exits"] as? [String: Any])?["total"] as? Int
        }
        let paused = try totalExits()
        usleep(1_000_000)
        let later = try totalExits()
        #expect(paused != nil && paused == later, "exits while paused: \(String(describing: paused)) then \(String(describing: later))")
        #expect(try vm.request("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
        #expect(try vm.request("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204, "resuming twice is harmless")
        let response = try vm.request("PUT", "/actions", #"{"action_type": "Shutdown", "timeout_ms": 150000}"#)
        #expect(response.status == 204, "\(response.body)")
        #expect(vm.waitForExit(seconds: 180) == 0, "stderr: \(vm.stderrText())")
        #expect(vm.serial.contains("init: power button pressed"), "console: \(vm.serial.suffix(2000))")
        let log = (try? String(contentsOfFile: vm.apiLog, encoding: .utf8)) ?? ""
        #expect(!log.contains("did not power off"), "the guest powered off by itself: \(log)")
    }
}

/// `swiftlet run -- CMD` through its snapshot cache (docs/snapshots.md,
/// "swiftlet run"): the first run boots and saves the guest once its agent
/// answers, later runs restore it and run the command through the agent.
extension LinuxGuestTests {
    @Test("swiftlet run saves a snapshot on its first run; later runs restore it without booting, two clones at once, and a damaged one is replaced by a cold boot",
          .timeLimit(.minutes(10)))
    func runFromSnapshot() throws {
        // A kernel parameter of this test's own: a snapshot key no earlier run used.
        let shape = ["--cmdline", "swiftlet.test=\(UUID().uuidString.prefix(8))"]
        let first = try ProcessTests.run("swiftlet", ["run"] + shape + ["--", "echo", "first run"])
        #expect(first.status == 0, "stderr: \(first.stderr)")
        #expect(first.stdout == "first run\n", "only the command's output: \(first.stdout.suffix(2000))")
        let note = try #require(first.stderr.split(separator: "\n").first { $0.contains("saved the booted guest as a snapshot") },
                                "stderr: \(first.stderr)")
        let folder = try #require(note.split(separator: "(").dropFirst().first?.split(separator: ")").first.map(String.init))
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let statePath = folder + "/state"
        let stateSize = try #require(try FileManager.default.attributesOfItem(atPath: statePath)[.size] as? Int)
        #expect(FileManager.default.fileExists(atPath: folder + "/memory"))

        // Two clones at once from the same files, each with its own command
        // (quotes and runs of spaces arrive intact).
        let clones = try ["a", "b"].map { name in
            try ProcessTests.start("swiftlet", ["run"] + shape + ["--", "sh", "-c", "printf '%s|%s\\n' clone-\(name) 'two  spaces'; exit 7"])
        }
        for (name, (process, output, errors)) in zip(["a", "b"], clones) {
            let stdout = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(process.terminationStatus == 7, "clone \(name): stderr: \(stderr)")
            #expect(stdout == "clone-\(name)|two  spaces\n", "clone \(name): \(stdout.suffix(2000))")
            #expect(!stderr.contains("saved the booted guest"), "clone \(name) was restored, not booted: \(stderr)")
            #expect(!stderr.contains("booting cold"), "clone \(name): \(stderr)")
        }

        // A damaged snapshot is refused, dropped, and saved anew by a cold boot.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: statePath))
        try handle.truncate(atOffset: UInt64(stateSize / 2))
        try handle.close()
        let repaired = try ProcessTests.run("swiftlet", ["run"] + shape + ["--", "echo", "after repair"])
        #expect(repaired.status == 0, "stderr: \(repaired.stderr)")
        #expect(repaired.stderr.contains("did not load"), "stderr: \(repaired.stderr)")
        #expect(repaired.stderr.contains("saved the booted guest"), "booted and saved again: \(repaired.stderr)")
        #expect(repaired.stdout == "after repair\n", "stdout: \(repaired.stdout)")
        let newSize = try FileManager.default.attributesOfItem(atPath: statePath)[.size] as? Int
        #expect(newSize == stateSize, "the snapshot was saved again whole")
    }
}
