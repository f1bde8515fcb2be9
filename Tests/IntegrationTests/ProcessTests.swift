import Foundation
import Testing

/// Runs the swiftlet-vmm and swiftlet binaries on kit guests, as a user would.
@Suite("VMM processes", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct ProcessTests {
    static func binary(_ name: String) -> String {
        let runner = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: runner).deletingLastPathComponent().appendingPathComponent(name).path
    }

    static func start(_ name: String, _ arguments: [String]) throws -> (Process, Pipe, Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary(name))
        process.arguments = arguments
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return (process, output, errors)
    }

    static func run(_ name: String, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let (process, output, errors) = try start(name, arguments)
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    @Test("swiftlet-vmm prints the guest's serial output on stdout and exits 0 on power-off")
    func helloProcess() throws {
        let result = try Self.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello")])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("KIT hello PASS"))
    }

    @Test("swiftlet run boots the same guest from a JSON config")
    func runWithConfig() throws {
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-run-\(getpid()).json")
        let json = #"{"kernel": "\#(try KitGuest.program("acpi"))", "cpus": 2, "memory": "64M"}"#
        try Data(json.utf8).write(to: config)
        defer { try? FileManager.default.removeItem(at: config) }
        let result = try Self.run("swiftlet", ["run", "--config", config.path])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("KIT acpi cpus=2"))
    }

    @Test("a guest reboot exits with status 2 by default")
    func rebootExits() throws {
        let result = try Self.run("swiftlet-vmm", ["--kernel", try KitGuest.program("reboot")])
        #expect(result.status == 2)
        #expect(result.stderr.contains("--on-reboot restart"))
    }

    @Test("--on-reboot restart boots the guest again; SIGTERM stops it with status 4")
    func rebootRestarts() throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-reboot-\(getpid()).log")
        defer { try? FileManager.default.removeItem(at: log) }
        let (process, _, errors) = try Self.start("swiftlet-vmm", [
            "--kernel", try KitGuest.program("reboot"), "--on-reboot", "restart", "--serial", "file:\(log.path)",
        ])
        // Wait (bounded) until the guest has booted at least three times.
        var boots = 0
        for _ in 0..<300 where boots < 3 {
            usleep(50_000)
            boots = ((try? String(contentsOf: log, encoding: .utf8)) ?? "").components(separatedBy: "KIT reboot requested").count - 1
        }
        process.terminate()
        _ = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(boots >= 3)
        #expect(process.terminationStatus == 4)
    }

    @Test("a crashing guest exits with status 3 and its registers on stderr")
    func crashStatus() throws {
        let result = try Self.run("swiftlet-vmm", ["--kernel", try KitGuest.program("fault")])
        #expect(result.status == 3)
        #expect(result.stderr.contains("guest crashed") && result.stderr.contains("rip="), "stderr: \(result.stderr)")
    }

    @Test("an initrd larger than guest memory is refused before boot, naming it")
    func initrdTooLarge() throws {
        // A PVH ELF whose segment lies at 64 MiB cannot load into 16 MiB of RAM.
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-initrd-empty-\(getpid())")
        try Data().write(to: empty)
        defer { try? FileManager.default.removeItem(at: empty) }
        let result = try Self.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--memory", "16M",
                                                   "--initrd", empty.path])
        #expect(result.status == 1 && result.stderr.contains("empty"), "an empty initrd is refused: \(result.stderr)")
        // A device is no initrd (reading one could block or never end).
        let device = try Self.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--initrd", "/dev/null"])
        #expect(device.status == 1 && device.stderr.contains("initrd '/dev/null' is a character device: expected a regular file"), "\(device.stderr)")
        let big = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-initrd-\(getpid())")
        try Data(count: 20 << 20).write(to: big)
        defer { try? FileManager.default.removeItem(at: big) }
        let tooBig = try Self.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--memory", "16M", "--initrd", big.path])
        #expect(tooBig.status == 1)
        #expect(tooBig.stderr.contains("initrd"), "stderr: \(tooBig.stderr)")
        #expect(tooBig.stderr.split(separator: "\n").count == 1, "stderr: \(tooBig.stderr)")
    }

    @Test("a file that is not a kernel gets a clear error")
    func notAKernel() throws {
        let result = try Self.run("swiftlet-vmm", ["--kernel", "/etc/hostname"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("not an ELF") || result.stderr.contains("bzImage"), "stderr: \(result.stderr)")
    }
}
