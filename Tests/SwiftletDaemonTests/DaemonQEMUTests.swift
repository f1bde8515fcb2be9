import Foundation
import SwiftletClient
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The QEMU driver against a real swiftletd and qemu-system-x86_64 on
/// /dev/kvm: the same guests under both drivers through the CLI, and QEMU
/// VMs' lifecycle, crashes, re-adoption, firmware boot and jail.
@Suite("swiftletd's QEMU driver", .serialized, .enabled(if: TestEnvironment.guestsRun, TestEnvironment.kvmSkip))
struct DaemonQEMUTests {
    static let qemu = "/usr/bin/qemu-system-x86_64"

    /// Fails under CI when QEMU is missing (scripts/install-deps installs it), else skips with the reason.
    static func requireQEMU() throws -> Bool {
        if access(qemu, X_OK) == 0 { return true }
        if TestEnvironment.isCI { Issue.record("\(qemu) is missing; scripts/install-deps installs qemu-system-x86") }
        print("skipping: \(qemu) is missing (apt-get install qemu-system-x86)")
        return false
    }

    /// Runs the CLI and requires success; its standard output.
    @discardableResult
    static func cli(_ daemon: DaemonHarness, _ arguments: String...) throws -> String {
        let result = try daemon.cli(arguments)
        try #require(result.status == 0, "swiftlet \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.stderr)")
        return result.stdout
    }

    /// Defines a VM from YAML through `swiftlet define`.
    static func define(_ daemon: DaemonHarness, _ yaml: String) throws {
        let file = daemon.directory + "/vm-\(UInt32.random(in: 0...UInt32.max)).yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        try cli(daemon, "define", file)
    }

    /// The value after `key=` on the console line that starts with `prefix`.
    static func field(_ console: String, line prefix: String, _ key: String) -> String? {
        guard let line = console.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix(prefix) }),
              let range = line.range(of: key + "=") else { return nil }
        return line[range.upperBound...].split(separator: " ").first.map(String.init)
    }

    @Test("a kit guest sees the same CPUs, memory and disk under both drivers, started through the CLI", .timeLimit(.minutes(4)))
    func kitGuestsAgree() throws {
        guard try Self.requireQEMU() else { return }
        let daemon = try DaemonHarness(label: "qemu-kit")
        defer { daemon.tearDown() }
        let disk = daemon.imagesDirectory + "/disk.raw"
        try FileManager.default.createDirectory(atPath: daemon.imagesDirectory, withIntermediateDirectories: true)
        #expect(truncate(disk, 0) == 0 || FileManager.default.createFile(atPath: disk, contents: nil))
        #expect(truncate(disk, 48 << 20) == 0)
        var seen: [String: [String: String]] = [:]
        for hypervisor in ["swiftlet", "qemu"] {
            for program in ["smp", "memmap", "virtio-blk"] {
                let name = "\(program)-\(hypervisor)"
                try Self.define(daemon, """
                    name: \(name)
                    hypervisor: \(hypervisor)
                    cpus: 2
                    memory_mib: 64
                    kernel: \(try TestEnvironment.kitProgram(program))
                    on_reboot: shutdown
                    disks:
                      - path: \(disk)
                        readonly: true
                    """)
                try Self.cli(daemon, "start", name)
                let info = try daemon.wait(for: name, state: .shutOff, seconds: 60)
                let console = String(decoding: try daemon.client.consoleLog(name), as: UTF8.self)
                #expect(info.state == .shutOff && info.reason == "the guest powered off", "\(name): \(info)\n\(console.suffix(1500))")
                #expect(console.contains("KIT \(program) PASS"), "\(name): \(console.suffix(1500))")
                seen[hypervisor, default: [:]]["cpus"] = seen[hypervisor]?["cpus"] ?? Self.field(console, line: "KIT smp cpus=", "online")
                seen[hypervisor, default: [:]]["ram"] = seen[hypervisor]?["ram"] ?? Self.field(console, line: "KIT memmap ram=", "ram")
                seen[hypervisor, default: [:]]["disk"] = seen[hypervisor]?["disk"] ?? Self.field(console, line: "KIT virtio-blk capacity=", "capacity")
                seen[hypervisor, default: [:]]["readonly"] = seen[hypervisor]?["readonly"] ?? Self.field(console, line: "KIT virtio-blk capacity=", "ro")
            }
        }
        let listing = try Self.cli(daemon, "list", "--all")
        #expect(listing.contains("HYPERVISOR") && listing.contains("smp-qemu") && listing.contains(" qemu "), "\(listing)")
        let swiftlet = seen["swiftlet"] ?? [:], qemu = seen["qemu"] ?? [:]
        #expect(swiftlet["cpus"] == "2" && qemu["cpus"] == "2", "\(seen)")
        #expect(swiftlet["disk"] == "\((48 << 20) / 512)" && qemu["disk"] == swiftlet["disk"], "\(seen)")
        #expect(swiftlet["readonly"] == "1" && qemu["readonly"] == "1", "\(seen)")
        // Firmware reserves a little more below 1 MiB and at the top under QEMU.
        let ram = (Int(swiftlet["ram"] ?? "") ?? 0, Int(qemu["ram"] ?? "") ?? 0)
        #expect(ram.0 > 60 << 20 && abs(ram.0 - ram.1) <= 1 << 20, "\(seen)")
    }

    @Test("the default Linux guest sees the same CPUs, memory and disks under both drivers and shuts down through the ACPI power button",
          .timeLimit(.minutes(6)),
          .enabled(if: TestEnvironment.linuxGuestBuilt || TestEnvironment.isCI, "needs the default guest (guest/build-image)"))
    func linuxGuestsAgree() throws {
        guard try Self.requireQEMU() else { return }
        let daemon = try DaemonHarness(label: "qemu-linux")
        defer { daemon.tearDown() }
        let guest = TestEnvironment.linuxGuestDirectory
        let initrd = FileManager.default.fileExists(atPath: guest + "/initramfs.cpio") ? guest + "/initramfs.cpio" : guest + "/initramfs.cpio.gz"
        let commandLine = (try String(contentsOfFile: guest + "/cmdline", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)
        try FileManager.default.createDirectory(atPath: daemon.imagesDirectory, withIntermediateDirectories: true)
        // Each VM its own images: both hypervisors lock the images they write.
        for hypervisor in ["swiftlet", "qemu"] {
            for (index, size) in [32, 80].enumerated() {
                let path = daemon.imagesDirectory + "/\(hypervisor)-disk\(index).raw"
                #expect(FileManager.default.createFile(atPath: path, contents: nil) && truncate(path, off_t(size) << 20) == 0)
            }
        }
        // Prints what the guest sees, one short line each (kernel messages may
        // land between console lines), then waits for the power button.
        let report = "echo SEEN cpus=$(nproc); echo SEEN mem=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2); "
            + "for d in /sys/block/vd*; do echo SEEN disk=$(cat $d/size); done; echo SEEN done=1; sleep 600"
        let command = Data(report.utf8).base64EncodedString()
        for hypervisor in ["swiftlet", "qemu"] {
            try Self.define(daemon, """
                name: linux-\(hypervisor)
                hypervisor: \(hypervisor)
                cpus: 2
                memory_mib: 256
                kernel: \(guest)/vmlinux
                initrd: \(initrd)
                cmdline: \(commandLine) swiftlet.cmd64=\(command)
                disks:
                  - path: \(daemon.imagesDirectory)/\(hypervisor)-disk0.raw
                  - path: \(daemon.imagesDirectory)/\(hypervisor)-disk1.raw
                """)
        }
        // Both boot at once: the slower (QEMU's firmware on this emulated host) sets the pace.
        for hypervisor in ["swiftlet", "qemu"] { try Self.cli(daemon, "start", "linux-\(hypervisor)") }
        var seen: [String: String] = [:]
        for hypervisor in ["swiftlet", "qemu"] {
            let name = "linux-\(hypervisor)"
            #expect(try daemon.consoleContains(name, "SEEN done=1", seconds: 240), "\(name) never reported")
            let console = String(decoding: try daemon.client.consoleLog(name), as: UTF8.self)
            // "cpus=2 mem=245660 disk=65536 disk=163840", from the SEEN lines in order.
            seen[hypervisor] = console.split(whereSeparator: \.isNewline).compactMap { line in
                line.range(of: "SEEN ").map { String(line[$0.upperBound...]).trimmingCharacters(in: .whitespaces) }
            }.filter { $0 != "done=1" }.joined(separator: " ")
        }
        let swiftlet = "SEEN " + (seen["swiftlet"] ?? ""), qemu = "SEEN " + (seen["qemu"] ?? "")
        #expect(Self.field(swiftlet, line: "SEEN", "cpus") == "2" && Self.field(qemu, line: "SEEN", "cpus") == "2", "\(seen)")
        #expect(swiftlet.hasSuffix("disk=65536 disk=163840") && qemu.hasSuffix("disk=65536 disk=163840"), "\(seen)")
        // The kernel keeps a slightly different share under each (firmware tables, reserved ranges).
        let memory = (Int(Self.field(swiftlet, line: "SEEN", "mem") ?? "") ?? 0, Int(Self.field(qemu, line: "SEEN", "mem") ?? "") ?? 0)
        #expect(memory.0 > 200_000 && Double(abs(memory.0 - memory.1)) <= 0.03 * Double(memory.0), "\(seen)")
        for hypervisor in ["swiftlet", "qemu"] {
            let name = "linux-\(hypervisor)"
            let info = try SwiftletAPIClient(socketPath: daemon.socket, timeout: 180).action(name, "shutdown", query: "wait=120")
            let console = String(decoding: try daemon.client.consoleLog(name), as: UTF8.self)
            #expect(info.state == .shutOff && info.reason == "shut down", "\(name): \(info)\n\(console.suffix(1500))")
            #expect(console.contains("power button pressed"), "\(name): \(console.suffix(1500))")
        }
    }

    @Test("a QEMU VM pauses, resumes, reboots in place, reports stats and metrics and is destroyed through the CLI; kills from outside and guest panics are crashes with the reason",
          .timeLimit(.minutes(4)))
    func lifecycle() throws {
        guard try Self.requireQEMU() else { return }
        let daemon = try DaemonHarness(label: "qemu-life")
        defer { daemon.tearDown() }
        try Self.define(daemon, """
            name: tick
            hypervisor: qemu
            cpus: 2
            memory_mib: 64
            kernel: \(try TestEnvironment.kitProgram("idle"))
            cmdline: period_ms=20
            """)
        #expect(try Self.cli(daemon, "start", "tick").contains("running"))
        #expect(try daemon.consoleContains("tick", "KIT idle tick 3", seconds: 60))
        let info = try Self.cli(daemon, "info", "tick")
        #expect(info.contains("qemu") && info.contains("Control API:  yes"), "\(info)")

        try Self.cli(daemon, "pause", "tick")
        #expect(try daemon.client.get("tick").state == .paused)
        let frozen = try daemon.client.consoleLog("tick").count
        usleep(300_000)
        #expect(try daemon.client.consoleLog("tick").count == frozen, "ticks went on while paused")
        try Self.cli(daemon, "resume", "tick")
        #expect(try daemon.client.get("tick").state == .running)
        #expect(try daemon.consoleContains("tick", "KIT idle tick 20", seconds: 30))

        // on_reboot: restart resets the guest in the same QEMU.
        let pid = try #require(try daemon.client.get("tick").pid)
        try Self.cli(daemon, "reboot", "tick")
        let deadline = Date().addingTimeInterval(30)
        var starts = 0
        while Date() < deadline && starts < 2 {
            starts = String(decoding: try daemon.client.consoleLog("tick"), as: UTF8.self).components(separatedBy: "KIT idle start").count - 1
            usleep(50_000)
        }
        #expect(starts == 2, "the guest did not start again after the reset")
        let after = try daemon.client.get("tick")
        #expect(after.state == .running && after.pid == pid, "\(after)")

        let stats = try daemon.client.stats("tick")
        #expect(stats.vmmMetrics?["vcpus.count"] == 2 && (stats.rssBytes ?? 0) > 0, "\(stats)")
        let metrics = try daemon.client.metrics()
        #expect(metrics.contains(#"swiftlet_vmm_counter{name="tick",counter="vcpus.count"} 2"#) && metrics.contains(#"swiftlet_vm_info{name="tick",hypervisor="qemu"} 1"#))
        #expect(try Self.cli(daemon, "stats", "tick").contains("vcpus.count"))
        // QEMU VMs have no vsock device: no agent and no snapshots, said plainly.
        let snapshot = try daemon.cli(["snapshot", "tick", "s1"])
        #expect(snapshot.status != 0 && snapshot.stderr.contains("qemu driver"), "\(snapshot)")

        let destroyed = try daemon.client.action("tick", "destroy")
        #expect(destroyed.state == .shutOff && destroyed.reason == "destroyed", "\(destroyed)")
        #expect(!FileManager.default.fileExists(atPath: daemon.stateDirectory + "/vms/tick/qmp.sock"))

        // Killed from outside: crashed with the signal.
        let victim = try #require(try daemon.client.action("tick", "start").pid)
        kill(victim, SIGKILL)
        let killed = try daemon.wait(for: "tick", state: .crashed, seconds: 10)
        #expect(killed.reason == "qemu-system-x86_64 was killed by SIGKILL", "\(killed)")

        // A guest panic (pvpanic): crashed, said so.
        try Self.define(daemon, """
            name: panic
            hypervisor: qemu
            memory_mib: 64
            kernel: \(try TestEnvironment.kitProgram("panic"))
            qemu:
              devices: [pvpanic]
            """)
        _ = try? daemon.client.action("panic", "start")
        let panicked = try daemon.wait(for: "panic", state: .crashed, seconds: 60)
        #expect(panicked.state == .crashed && panicked.reason == "the guest panicked", "\(panicked)")

        // A command line QEMU refuses: the start fails with QEMU's own words.
        try Self.define(daemon, """
            name: badcpu
            hypervisor: qemu
            memory_mib: 64
            kernel: \(try TestEnvironment.kitProgram("halt"))
            qemu:
              cpu: no-such-cpu-model
            """)
        let refused = try daemon.cli(["start", "badcpu"])
        #expect(refused.status != 0 && refused.stderr.contains("no-such-cpu-model"), "\(refused)")
        let failed = try daemon.client.get("badcpu")
        #expect(failed.state == .shutOff && failed.reason?.contains("no-such-cpu-model") == true, "\(failed)")
    }

    @Test("a QEMU VM outlives swiftletd and is re-adopted through its QMP socket with its true state", .timeLimit(.minutes(3)))
    func readoption() throws {
        guard try Self.requireQEMU() else { return }
        let daemon = try DaemonHarness(label: "qemu-adopt")
        defer { daemon.tearDown() }
        for name in ["a", "b"] {
            try Self.define(daemon, """
                name: \(name)
                hypervisor: qemu
                memory_mib: 64
                kernel: \(try TestEnvironment.kitProgram("halt"))
                """)
            try Self.cli(daemon, "start", name)
        }
        try Self.cli(daemon, "pause", "b")
        let pids = try ["a", "b"].map { try #require(try daemon.client.get($0).pid) }
        daemon.stop(signal: SIGKILL)
        #expect(pids.allSatisfy { kill($0, 0) == 0 }, "QEMU died with the daemon")
        try daemon.start()
        let a = try daemon.client.get("a"), b = try daemon.client.get("b")
        #expect(a.state == .running && a.pid == pids[0] && a.controlAPI, "\(a)")
        #expect(b.state == .paused && b.pid == pids[1], "\(b)")
        try Self.cli(daemon, "resume", "b")
        #expect(try daemon.client.get("b").state == .running)
        #expect(try daemon.client.stats("b").vmmMetrics?["vcpus.count"] == 1)
        let destroyed = try daemon.client.action("a", "destroy")
        #expect(destroyed.state == .shutOff && destroyed.pid == nil, "\(destroyed)")
        kill(pids[1], SIGKILL)
        let gone = try daemon.wait(for: "b", state: .shutOff, seconds: 10)
        #expect(gone.pid == nil && gone.reason?.contains("not its parent") == true, "\(gone)")
    }

    @Test("a UEFI VM starts under OVMF with its own variable store, and ends running or crashed with KVM's reason, never unknown; a jailed QEMU runs as the jail user in an empty root with a seccomp filter",
          .timeLimit(.minutes(2)))
    func firmwareAndJail() throws {
        guard try Self.requireQEMU() else { return }
        let ovmf = "/usr/share/OVMF/OVMF_CODE_4M.fd"
        guard access(ovmf, R_OK) == 0 else {
            if TestEnvironment.isCI { Issue.record("\(ovmf) is missing; scripts/install-deps installs ovmf") }
            print("skipping: \(ovmf) is missing (apt-get install ovmf)")
            return
        }
        let daemon = try DaemonHarness(label: "qemu-uefi")
        defer { daemon.tearDown() }
        try FileManager.default.createDirectory(atPath: daemon.imagesDirectory, withIntermediateDirectories: true)
        let disk = daemon.imagesDirectory + "/boot.raw"
        #expect(FileManager.default.createFile(atPath: disk, contents: nil) && truncate(disk, 16 << 20) == 0)
        try Self.define(daemon, """
            name: uefi
            hypervisor: qemu
            memory_mib: 128
            firmware: uefi
            disks:
              - path: \(disk)
            """)
        // Firmware runs at CPL0, which kvm_pvm emulates: OVMF takes minutes and
        // may reach an instruction the emulator lacks (x87 FNINIT), which QEMU
        // reports as a KVM internal error. Either way the daemon must say so.
        let started = try daemon.client.action("uefi", "start")
        #expect(started.state == .running || started.reason?.contains("KVM internal error") == true, "\(started)")
        #expect(FileManager.default.fileExists(atPath: daemon.stateDirectory + "/vms/uefi/OVMF_VARS.fd"))
        let after = try daemon.client.get("uefi")
        if after.state == .running {
            let destroyed = try daemon.client.action("uefi", "destroy")
            #expect(destroyed.state == .shutOff && destroyed.reason == "destroyed", "\(destroyed)")
        } else {
            #expect(after.state == .crashed && after.reason?.hasPrefix("the guest crashed: KVM internal error") == true, "\(after)")
        }

        // The jail, on a guest that runs steadily here (a kit program halting).
        try Self.define(daemon, """
            name: jailed
            hypervisor: qemu
            memory_mib: 64
            kernel: \(try TestEnvironment.kitProgram("halt"))
            """)
        let running = try daemon.client.action("jailed", "start")
        let pid = try #require(running.pid)
        if geteuid() == 0 {
            // The daemon runs jailed as root: QEMU dropped to the jail user, chrooted, filtered.
            let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            #expect(status.contains("Uid:\t64064\t64064\t64064\t64064") && status.contains("Seccomp:\t2"), "\(status)")
            let root = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/root")
            #expect(root == daemon.stateDirectory + "/jail/qemu/jailed", "\(root ?? "-")")
        }
        let destroyed = try daemon.client.action("jailed", "destroy")
        #expect(destroyed.state == .shutOff && destroyed.reason == "destroyed", "\(destroyed)")
        #expect(!FileManager.default.fileExists(atPath: daemon.stateDirectory + "/jail/qemu/jailed"))
    }

    /// A stand-in for qemu-system-x86_64 whose event socket turns to garbage
    /// after a moment: what a broken (or hostile) QMP stream looks like.
    static let brokenQMP = #"""
        #!/usr/bin/env python3
        import json, os, socket, sys, threading, time
        if "--version" in sys.argv:
            print("QEMU emulator version 0.0.0 (fake)"); sys.exit(0)
        paths = [a.split(",")[0][5:] for a in sys.argv if a.startswith("unix:")]
        greeting = json.dumps({"QMP": {"version": {"qemu": {"major": 0, "minor": 0, "micro": 0}, "package": ""}, "capabilities": []}}) + "\r\n"
        def serve(path, events):
            server = socket.socket(socket.AF_UNIX); server.bind(path); server.listen(1)
            while True:
                connection, _ = server.accept(); reader = connection.makefile("r")
                connection.sendall(greeting.encode())
                for line in reader:
                    request = json.loads(line)
                    answer = {"status": "running", "running": True} if request.get("execute") == "query-status" else {}
                    connection.sendall((json.dumps({"return": answer, "id": request.get("id")}) + "\r\n").encode())
                    if events:
                        time.sleep(0.5); connection.sendall(b"this is not QMP\r\n")
                connection.close()
        for index, path in enumerate(paths):
            threading.Thread(target=serve, args=(path, path.endswith("qmp-events.sock")), daemon=True).start()
        time.sleep(120)
        """#

    @Test("a QMP stream that breaks while QEMU runs is a crash with the reason, and that QEMU is stopped", .timeLimit(.minutes(1)))
    func brokenQMPIsCrash() throws {
        let directory = NSTemporaryDirectory() + "fake-qemu-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fake = directory + "/qemu-system-x86_64"
        try Self.brokenQMP.write(toFile: fake, atomically: true, encoding: .utf8)
        #expect(chmod(fake, 0o755) == 0)
        // Unjailed: the stand-in ignores -runas and friends, and runs as whoever starts it.
        let daemon = try DaemonHarness(label: "qemu-broken", extraArguments: ["--qemu", fake, "--no-jail"])
        defer { daemon.tearDown() }
        try Self.define(daemon, """
            name: broken
            hypervisor: qemu
            kernel: \(try TestEnvironment.kitProgram("halt"))
            """)
        let started = try daemon.client.action("broken", "start")
        let pid = try #require(started.pid)
        let info = try daemon.wait(for: "broken", state: .crashed, seconds: 20)
        #expect(info.state == .crashed && info.reason?.hasPrefix("QMP failed") == true, "\(info)\n\(daemon.log().suffix(1500))")
        #expect(kill(pid, 0) != 0, "the QEMU with the broken stream still runs")
    }

    @Test("a missing QEMU is one clear error at start, not at define, and `swiftlet drivers` says why", .timeLimit(.minutes(1)))
    func missingBinary() throws {
        let daemon = try DaemonHarness(label: "qemu-missing", extraArguments: ["--qemu", "/nonexistent/qemu-system-x86_64"])
        defer { daemon.tearDown() }
        try Self.define(daemon, """
            name: q
            hypervisor: qemu
            kernel: \(try TestEnvironment.kitProgram("halt"))
            """)
        let start = try daemon.cli(["start", "q"])
        #expect(start.status != 0 && start.stderr.contains("/nonexistent/qemu-system-x86_64") && start.stderr.contains("qemu-system-x86"), "\(start)")
        #expect(try daemon.client.get("q").state == .shutOff)
        let drivers = try Self.cli(daemon, "drivers")
        #expect(drivers.contains("swiftlet  yes") && drivers.contains("qemu      no"), "\(drivers)")
        let version = try daemon.client.version()
        #expect(version.drivers.map(\.name) == ["swiftlet", "qemu"] && version.drivers.first?.version != nil, "\(version)")
        #expect(version.drivers.last?.available == false && version.drivers.last?.reason?.contains("--qemu") == true, "\(version)")
    }
}
