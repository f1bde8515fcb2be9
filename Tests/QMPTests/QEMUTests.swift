import Foundation
import QMP
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A real qemu-system-x86_64 with no machine (no KVM needed), its monitor on a
/// Unix socket. Killed and reaped on deinit whatever the test did.
final class QEMUProcess {
    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"
    static let executable = ["/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// False (with the reason printed) when QEMU is missing; under CI=true that is a failure.
    static func available() -> Bool {
        if executable != nil { return true }
        if isCI { Issue.record("qemu-system-x86_64 is missing (CI=true requires it)") } else { print("skipped: qemu-system-x86_64 is not installed") }
        return false
    }

    let folder: String
    let socketPath: String
    let process = Process()

    init(executable: String) throws {
        folder = NSTemporaryDirectory() + "swiftlet-qmp-qemu-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        socketPath = folder + "/qmp.sock"
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["-machine", "none", "-nodefaults", "-display", "none", "-qmp", "unix:\(socketPath),server=on,wait=off"]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
    }

    /// Connects once QEMU listens (it creates the socket shortly after starting).
    func connect() throws -> QMPClient {
        let deadline = Date().addingTimeInterval(10)
        while true {
            let attempt = Result { () throws(QMPError) in try QMPClient(socketPath: socketPath, timeout: 10) }
            // Only a refused or missing socket is worth retrying; QEMU may still be starting.
            if case .failure(let error) = attempt, case .connect = error, Date() < deadline, process.isRunning {
                usleep(20_000)
                continue
            }
            return try attempt.get()
        }
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: folder)
    }
}

@Suite("QMP client against a real QEMU", .timeLimit(.minutes(1)))
struct QEMUTests {
    /// The next event named `name`, skipping others (QEMU may interleave some).
    func event(_ name: String, from client: QMPClient) throws(QMPError) -> QMPEvent? {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let event = try client.nextEvent(timeout: 1), event.name == name { return event }
        }
        return nil
    }

    @Test("stop, cont and quit give STOP, RESUME and SHUTDOWN, then the socket closes")
    func lifecycle() throws {
        guard QEMUProcess.available(), let executable = QEMUProcess.executable else { return }
        let qemu = try QEMUProcess(executable: executable)
        let client = try qemu.connect()
        defer { client.close() }
        #expect(client.version.hasPrefix("7."), "QEMU 7.x is the version under test")
        let before = try client.queryStatus()
        #expect(before.status == "running" && before.running)
        #expect(try client.queryCPUCount() >= 0)

        #expect(try client.execute("stop") == .object([:]))
        #expect(try event("STOP", from: client) != nil)
        let stopped = try client.queryStatus()
        #expect(stopped.status == "paused" && !stopped.running)

        _ = try client.execute("cont")
        #expect(try event("RESUME", from: client) != nil)

        let failure = #expect(throws: QMPError.self) { try client.execute("no-such-command") }
        guard case .commandFailed(_, "CommandNotFound", _)? = failure else { Issue.record("got \(String(describing: failure))"); return }

        _ = try client.execute("quit")
        let shutdown = try event("SHUTDOWN", from: client)
        #expect(shutdown?.data["reason"]?.string == "host-qmp-quit")
        #expect(shutdown?.timestamp != nil)
        let closed = #expect(throws: QMPError.self) { while true { _ = try client.nextEvent(timeout: 10) } }
        guard case .closed? = closed else { Issue.record("got \(String(describing: closed))"); return }
    }

    @Test("a second client gets its own answers while the first waits for events")
    func twoClients() throws {
        guard QEMUProcess.available(), let executable = QEMUProcess.executable else { return }
        let qemu = try QEMUProcess(executable: executable)
        let watcher = try qemu.connect()
        defer { watcher.close() }
        // QEMU serves one client per -qmp socket at a time: the second waits until the first closes.
        // So the daemon's short-lived command clients go through their own socket; here the watcher issues the commands.
        _ = try watcher.execute("stop")
        #expect(try event("STOP", from: watcher)?.name == "STOP")
        #expect(try watcher.execute("query-status", arguments: [:])["status"]?.string == "paused")
    }
}
