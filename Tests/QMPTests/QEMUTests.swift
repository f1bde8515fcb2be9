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
    /// One QMP socket per monitor: QEMU serves a single client per socket at a time.
    let socketPaths: [String]
    var socketPath: String { socketPaths[0] }
    let process = Process()

    init(executable: String, monitors: Int = 1) throws {
        let folder = NSTemporaryDirectory() + "swiftlet-qmp-qemu-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        self.folder = folder
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        socketPaths = (0..<max(monitors, 1)).map { folder + "/qmp\($0).sock" }
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["-machine", "none", "-nodefaults", "-display", "none"]
            + socketPaths.flatMap { ["-qmp", "unix:\($0),server=on,wait=off"] }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
    }

    /// Connects once QEMU listens (it creates the socket shortly after starting).
    func connect(monitor: Int = 0, timeout: Double = 10) throws -> QMPClient {
        let deadline = Date().addingTimeInterval(10)
        while true {
            let attempt = Result { () throws(QMPError) in try QMPClient(socketPath: socketPaths[monitor], timeout: timeout) }
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

    @Test("with a second QMP socket, a command client works while a watcher holds the first, and both see events")
    func watcherAndCommandClient() throws {
        guard QEMUProcess.available(), let executable = QEMUProcess.executable else { return }
        let qemu = try QEMUProcess(executable: executable, monitors: 2)
        let watcher = try qemu.connect(monitor: 0)
        defer { watcher.close() }
        do {
            let commands = try qemu.connect(monitor: 1)
            defer { commands.close() }
            _ = try commands.execute("stop")
            #expect(try commands.queryStatus().status == "paused")
        }
        #expect(try event("STOP", from: watcher) != nil, "events go to every monitor")
        // A short-lived client per command: the socket is free again once the last one closed.
        let again = try qemu.connect(monitor: 1)
        defer { again.close() }
        _ = try again.execute("cont")
        #expect(try event("RESUME", from: watcher) != nil)
    }

    @Test("QEMU serves one client per QMP socket: a second one gets no greeting until the first closes")
    func oneClientPerSocket() throws {
        guard QEMUProcess.available(), let executable = QEMUProcess.executable else { return }
        let qemu = try QEMUProcess(executable: executable)
        let first = try qemu.connect()
        let error = #expect(throws: QMPError.self) { _ = try QMPClient(socketPath: qemu.socketPath, timeout: 0.5) }
        #expect(error == .timeout(step: "greeting", seconds: 0.5))
        first.close()
        let second = try qemu.connect()
        defer { second.close() }
        #expect(try second.queryStatus().running)
    }
}
