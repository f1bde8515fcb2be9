import Foundation
import SwiftletClient
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A real swiftletd booting kit guests (and one Linux guest) on /dev/kvm.
@Suite("swiftletd running guests", .serialized, .enabled(if: TestEnvironment.guestsRun, TestEnvironment.kvmSkip))
struct DaemonLifecycleTests {
    @Test("the whole lifecycle through the swiftlet CLI", .timeLimit(.minutes(3)))
    func cliLifecycle() throws {
        let daemon = try DaemonHarness(label: "cli")
        defer { daemon.tearDown() }
        let file = daemon.directory + "/web.yaml"
        try """
            # a kit guest that halts until stopped
            name: web
            kernel: \(try TestEnvironment.kitProgram("halt"))
            memory_mib: 64
            cpus: 1
            """.write(toFile: file, atomically: true, encoding: .utf8)

        var result = try daemon.cli(["define", file])
        #expect(result.status == 0 && result.stdout.contains("defined web"), "\(result)")
        result = try daemon.cli(["define", file])
        #expect(result.status == 4 && result.stderr.contains("already defined"), "\(result)")
        result = try daemon.cli(["list"])
        #expect(result.status == 0 && !result.stdout.contains("web"), "list shows running VMs only: \(result.stdout)")
        result = try daemon.cli(["list", "--all"])
        #expect(result.stdout.contains("web") && result.stdout.contains("shut off"), "\(result.stdout)")

        result = try daemon.cli(["start", "web"])
        #expect(result.status == 0 && result.stdout.contains("running"), "\(result)")
        #expect(try daemon.consoleContains("web", "KIT halt ready"))
        result = try daemon.cli(["start", "web"])
        #expect(result.status == 4 && result.stderr.contains("already running"), "\(result)")
        result = try daemon.cli(["logs", "web"])
        #expect(result.stdout.contains("KIT halt ready"))
        // Attached with stdin at end of file, the console shows the recent output and detaches.
        result = try daemon.cli(["console", "web"])
        #expect(result.status == 0 && result.stdout.contains("KIT halt ready") && result.stderr.contains("Detached from web"), "\(result)")

        result = try daemon.cli(["info", "web", "--json"])
        let info = try SwiftletJSON.decoder.decode(VMInfo.self, from: Data(result.stdout.utf8))
        #expect(info.state == .running && info.pid != nil)
        let pid = try #require(info.pid)
        #expect(kill(pid, 0) == 0)
        // Its own session: it outlives the daemon's process group and terminal.
        #expect(getsid(pid) == pid)

        result = try daemon.cli(["stats", "web", "--json"])
        let stats = try SwiftletJSON.decoder.decode(VMStats.self, from: Data(result.stdout.utf8))
        #expect((stats.rssBytes ?? 0) > 0 && stats.pid == pid)

        result = try daemon.cli(["pause", "web"])
        #expect(result.status == 0 && result.stdout.contains("paused"), "\(result)")
        #expect(try daemon.client.get("web").state == .paused)
        result = try daemon.cli(["resume", "web"])
        let resumed = try daemon.client.get("web").state
        #expect(result.status == 0 && resumed == .running, "\(result)")

        result = try daemon.cli(["undefine", "web"])
        #expect(result.status == 4 && result.stderr.contains("destroy"), "\(result)")
        result = try daemon.cli(["shutdown", "web", "--wait", "3", "--force"])
        #expect(result.status == 0, "\(result)")
        let stopped = try daemon.wait(for: "web", state: .shutOff)
        #expect(stopped.state == .shutOff && stopped.pid == nil, "\(stopped)")
        #expect(kill(pid, 0) != 0 || (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) == nil)

        result = try daemon.cli(["start", "web"])
        #expect(result.status == 0)
        result = try daemon.cli(["destroy", "web"])
        #expect(result.status == 0 && result.stdout.contains("destroyed"), "\(result)")
        result = try daemon.cli(["undefine", "web"])
        #expect(result.status == 0, "\(result)")
        result = try daemon.cli(["info", "web"])
        #expect(result.status == 3 && result.stderr.contains("swiftlet list --all"), "\(result)")
        result = try daemon.cli(["list"], environment: ["SWIFTLET_SOCKET": daemon.directory + "/absent.sock"])
        #expect(result.status == 5 && result.stderr.contains("not reachable"), "\(result)")
    }

    @Test("VMs keep running when swiftletd is killed, and a new swiftletd re-adopts them with their true state", .timeLimit(.minutes(3)))
    func restartReadopts() throws {
        let daemon = try DaemonHarness(label: "restart")
        defer { daemon.tearDown() }
        for name in ["a", "b"] {
            _ = try daemon.client.define(try daemon.definition(name))
            _ = try daemon.client.action(name, "start")
        }
        _ = try daemon.client.action("b", "pause")
        let pids = try ["a", "b"].map { try #require(try daemon.client.get($0).pid) }

        daemon.stop(signal: SIGKILL)
        #expect(pids.allSatisfy { kill($0, 0) == 0 }, "the VMMs died with the daemon")
        try daemon.start()

        let a = try daemon.client.get("a"), b = try daemon.client.get("b")
        #expect(a.state == .running && a.pid == pids[0], "\(a)")
        #expect(b.state == .paused && b.pid == pids[1], "\(b)")
        _ = try daemon.client.action("b", "resume")
        #expect(try daemon.client.get("b").state == .running)

        // An adopted VMM is still controlled: destroy works...
        let destroyed = try daemon.client.action("a", "destroy")
        #expect(destroyed.state == .shutOff && destroyed.pid == nil, "\(destroyed)")
        // ...and its death from outside is noticed.
        kill(pids[1], SIGKILL)
        let gone = try daemon.wait(for: "b", state: .shutOff, seconds: 10)
        #expect(gone.pid == nil && gone.reason?.contains("not its parent") == true, "\(gone)")

        // A stale pid file (a pid that is not a VMM) is not adopted.
        try "\(getpid())\n".write(toFile: daemon.stateDirectory + "/vms/a/vmm.pid", atomically: true, encoding: .utf8)
        daemon.stop()
        try daemon.start()
        #expect(try daemon.client.get("a").pid == nil)
    }

    @Test("a VMM whose pid file was never written (the daemon died right after spawning it) is found and adopted; one of an undefined VM is stopped", .timeLimit(.minutes(3)))
    func orphanWithoutPidFile() throws {
        let daemon = try DaemonHarness(label: "orphan")
        defer { daemon.tearDown() }
        for name in ["kept", "gone"] {
            _ = try daemon.client.define(try daemon.definition(name))
        }
        let kept = try #require(try daemon.client.action("kept", "start").pid)
        let gone = try #require(try daemon.client.action("gone", "start").pid)
        daemon.stop(signal: SIGKILL)
        // As if the daemon had died between posix_spawn and writing the pid files;
        // and "gone" was undefined by another daemon meanwhile (its row deleted).
        unlink(daemon.stateDirectory + "/vms/kept/vmm.pid")
        unlink(daemon.stateDirectory + "/vms/gone/vmm.pid")
        let database = daemon.stateDirectory + "/swiftletd.sqlite"
        let sqlite = Process()
        sqlite.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        sqlite.arguments = ["python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"DELETE FROM vm WHERE name='gone'\"); c.commit()", database]
        try sqlite.run()
        sqlite.waitUntilExit()
        #expect(sqlite.terminationStatus == 0)
        try daemon.start()
        let info = try daemon.client.get("kept")
        #expect(info.state == .running && info.pid == kept, "\(info)")
        let destroyed = try daemon.client.action("kept", "destroy")
        // Not this daemon's child: it may linger as a zombie, which has no exe link.
        #expect(destroyed.pid == nil && (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(kept)/exe")) == nil, "\(destroyed)")
        // The undefined VM's VMM is stopped, not left running untracked.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline && (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(gone)/exe")) != nil { usleep(20_000) }
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(gone)/exe")) == nil, "the orphaned VMM \(gone) still runs")
    }

    @Test("a VMM killed from outside shows as crashed with the signal, and the event stream reports it", .timeLimit(.minutes(2)))
    func killedVMMIsCrashed() async throws {
        let daemon = try DaemonHarness(label: "crash")
        defer { daemon.tearDown() }
        _ = try daemon.client.define(try daemon.definition("victim"))
        let client = daemon.client
        let connected = Mutex(false)
        let seen = Task.detached { () -> VMEvent? in
            var crashed: VMEvent?
            try? client.events(timeout: 30, onConnected: { connected.withLock { $0 = true } }) { event in
                if event.state == .crashed { crashed = event; return false }
                return true
            }
            return crashed
        }
        for _ in 0..<500 where !connected.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(connected.withLock { $0 })
        let pid = try #require(try daemon.client.action("victim", "start").pid)
        kill(pid, SIGKILL)
        let info = try daemon.wait(for: "victim", state: .crashed, seconds: 10)
        #expect(info.state == .crashed && info.reason?.contains("killed by SIGKILL") == true, "\(info)")
        let event = await seen.value
        #expect(event?.name == "victim" && event?.reason?.contains("SIGKILL") == true)
        // The outcome is kept across a daemon restart.
        daemon.stop()
        try daemon.start()
        #expect(try daemon.client.get("victim").state == .crashed)
        let metrics = try daemon.client.metrics()
        #expect(metrics.contains(#"swiftlet_vm_state{name="victim",state="crashed"} 1"#))
    }

    @Test("a guest that crashes (triple fault) is crashed with the VMM's report", .timeLimit(.minutes(2)))
    func guestCrash() throws {
        let daemon = try DaemonHarness(label: "fault")
        defer { daemon.tearDown() }
        _ = try daemon.client.define(try daemon.definition("fault", program: "fault"))
        _ = try? daemon.client.action("fault", "start")
        let info = try daemon.wait(for: "fault", state: .crashed, seconds: 20)
        #expect(info.state == .crashed && info.reason?.contains("guest crashed") == true, "\(info)")
    }

    @Test("50 concurrent clients define, start and destroy VMs: none lost or duplicated", .timeLimit(.minutes(5)))
    func concurrentClients() async throws {
        let daemon = try DaemonHarness(label: "many")
        defer { daemon.tearDown() }
        let kernel = try TestEnvironment.kitProgram("halt")
        let client = daemon.client
        let failures = await withTaskGroup(of: String?.self) { group in
            for index in 0..<50 {
                group.addTask {
                    do {
                        let name = "vm-\(index)"
                        _ = try client.define(VMDefinition(name: name, memoryMiB: 64, kernel: kernel))
                        let started = try client.action(name, "start")
                        guard started.state == .running else { return "\(name) started as \(started.state)" }
                        let stopped = try client.action(name, "destroy")
                        guard stopped.state == .shutOff else { return "\(name) destroyed as \(stopped.state)" }
                        return nil
                    } catch {
                        return "vm-\(index): \(error)"
                    }
                }
            }
            return await group.reduce(into: [String]()) { if let failure = $1 { $0.append(failure) } }
        }
        #expect(failures.isEmpty, "\(failures)")
        let vms = try daemon.client.list()
        #expect(vms.count == 50)
        #expect(Set(vms.map(\.definition.name)) == Set((0..<50).map { "vm-\($0)" }))
        #expect(Set(vms.compactMap(\.definition.uuid)).count == 50)
        #expect(vms.allSatisfy { $0.state == .shutOff && $0.pid == nil })
    }

    @Test("autostart VMs start with the daemon", .timeLimit(.minutes(2)))
    func autostart() throws {
        let daemon = try DaemonHarness(label: "auto")
        defer { daemon.tearDown() }
        var definition = try daemon.definition("auto")
        definition.autostart = true
        _ = try daemon.client.define(definition)
        #expect(try daemon.client.get("auto").state == .shutOff)
        daemon.stop()
        try daemon.start()
        #expect(try daemon.wait(for: "auto", state: .running, seconds: 10).state == .running)
    }

    @Test("the default Linux guest runs a command under swiftletd and powers off", .timeLimit(.minutes(5)),
          .enabled(if: TestEnvironment.linuxGuestBuilt || TestEnvironment.isCI, "needs the default guest (guest/build-image)"))
    func linuxGuest() throws {
        let daemon = try DaemonHarness(label: "linux")
        defer { daemon.tearDown() }
        let guest = TestEnvironment.linuxGuestDirectory
        let initrd = FileManager.default.fileExists(atPath: guest + "/initramfs.cpio") ? guest + "/initramfs.cpio" : guest + "/initramfs.cpio.gz"
        let baseCommandLine = (try String(contentsOfFile: guest + "/cmdline", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)
        let command = Data("echo hello from swiftletd".utf8).base64EncodedString()
        _ = try daemon.client.define(VMDefinition(name: "linux", memoryMiB: 256, kernel: guest + "/vmlinux", initrd: initrd,
                                                  cmdline: baseCommandLine + " swiftlet.cmd64=" + command, onReboot: "shutdown"))
        _ = try daemon.client.action("linux", "start")
        let info = try daemon.wait(for: "linux", state: .shutOff, seconds: 240)
        let console = String(decoding: try daemon.client.consoleLog("linux"), as: UTF8.self)
        #expect(info.state == .shutOff && info.reason == "the guest powered off", "\(info)\n\(console.suffix(2000))")
        #expect(console.contains("hello from swiftletd"), "\(console.suffix(2000))")
    }

    @Test("the Linux guest takes typed console input and shuts down gracefully through the ACPI power button", .timeLimit(.minutes(6)),
          .enabled(if: TestEnvironment.linuxGuestBuilt || TestEnvironment.isCI, "needs the default guest (guest/build-image)"))
    func linuxConsoleAndShutdown() throws {
        let daemon = try DaemonHarness(label: "linux-shell")
        defer { daemon.tearDown() }
        let guest = TestEnvironment.linuxGuestDirectory
        let initrd = FileManager.default.fileExists(atPath: guest + "/initramfs.cpio") ? guest + "/initramfs.cpio" : guest + "/initramfs.cpio.gz"
        let commandLine = (try String(contentsOfFile: guest + "/cmdline", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)
        _ = try daemon.client.define(VMDefinition(name: "shell", memoryMiB: 256, kernel: guest + "/vmlinux", initrd: initrd, cmdline: commandLine))
        let info = try daemon.client.action("shell", "start")
        #expect(try daemon.consoleContains("shell", "SWIFTLET-GUEST-READY", seconds: 240))
        // What `swiftlet console` does with keys: write them to the console FIFO.
        let input = try #require(info.consoleInput)
        let fifo = try #require(FileHandle(forWritingAtPath: input))
        try fifo.write(contentsOf: Data("echo typed-$((6*7))\n".utf8))
        try fifo.close()
        #expect(try daemon.consoleContains("shell", "typed-42", seconds: 60))
        guard info.controlAPI else { return }
        let after = try SwiftletAPIClient(socketPath: daemon.socket, timeout: 180).action("shell", "shutdown", query: "wait=120")
        let console = String(decoding: try daemon.client.consoleLog("shell"), as: UTF8.self)
        #expect(after.state == .shutOff && after.reason == "shut down", "\(after)\n\(console.suffix(1500))")
    }
}
