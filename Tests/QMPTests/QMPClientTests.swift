import Foundation
import HostSystem
import QMP
import Synchronization
import Testing

@Suite("QMP client against a fake server", .timeLimit(.minutes(1)))
struct QMPClientTests {
    @Test("the handshake reads the version and events interleaved with an answer are queued for later")
    func interleavedEvents() throws {
        let server = try FakeQMPServer { connection in
            connection.handshake()
            guard let id = connection.expect("query-status") else { return }
            connection.send(#"{"timestamp": {"seconds": 100, "microseconds": 500000}, "event": "STOP"}"#)
            connection.send(#"{"return": "stale", "id": 999}"#)
            connection.send(#"{"event": "RESUME", "data": {"reason": "x"}}"#)
            connection.send(#"{"return": {"status": "running", "running": true, "singlestep": false}, "id": \#(id)}"#)
            connection.waitForClose()
        }
        defer { server.finish() }
        let client = try QMPClient(socketPath: server.path, timeout: 5)
        defer { client.close() }
        #expect(client.version == "7.2.19")
        let status = try client.queryStatus()
        #expect(status.status == "running")
        #expect(status.running)
        #expect(try client.nextEvent(timeout: 1) == QMPEvent(name: "STOP", timestamp: 100.5))
        #expect(try client.nextEvent(timeout: 1) == QMPEvent(name: "RESUME", data: ["reason": "x"]))
        #expect(try client.nextEvent(timeout: 0.1) == nil, "no third event")
    }

    @Test("an error reply becomes commandFailed with its class and description")
    func errorReply() throws {
        let server = try FakeQMPServer { connection in
            connection.handshake()
            guard let id = connection.expect("device_del") else { return }
            connection.send(#"{"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}, "id": \#(id)}"#)
            connection.waitForClose()
        }
        defer { server.finish() }
        let client = try QMPClient(socketPath: server.path)
        defer { client.close() }
        let error = #expect(throws: QMPError.self) { try client.execute("device_del", arguments: ["id": "nope"]) }
        #expect(error == .commandFailed(command: "device_del", errorClass: "DeviceNotFound", description: "Device 'nope' not found"))
    }

    @Test("the peer closing the socket is .closed, for commands and for events")
    func peerClose() throws {
        let server = try FakeQMPServer { connection in
            connection.handshake()
            connection.send(#"{"event": "SHUTDOWN", "data": {"guest": false}}"#)
        }
        defer { server.finish() }
        let client = try QMPClient(socketPath: server.path)
        defer { client.close() }
        #expect(try client.nextEvent(timeout: 5)?.name == "SHUTDOWN")
        let eventError = #expect(throws: QMPError.self) { try client.nextEvent(timeout: 5) }
        guard case .closed? = eventError else { Issue.record("nextEvent: \(String(describing: eventError))"); return }
        let commandError = #expect(throws: QMPError.self) { try client.execute("query-status") }
        guard case .closed? = commandError else { Issue.record("execute: \(String(describing: commandError))"); return }
    }

    @Test("a silent server is a timeout within the deadline")
    func silentServer() throws {
        let server = try FakeQMPServer { connection in
            connection.handshake()
            connection.waitForClose()
        }
        defer { server.finish() }
        let client = try QMPClient(socketPath: server.path, timeout: 0.5)
        defer { client.close() }
        let start = ContinuousClock.now
        let error = #expect(throws: QMPError.self) { try client.execute("query-status") }
        let elapsed = ContinuousClock.now - start
        #expect(error == .timeout(step: "query-status", seconds: 0.5))
        #expect(elapsed >= .milliseconds(450) && elapsed < .seconds(2), "the wait matched the timeout")
        let eventStart = ContinuousClock.now
        #expect(try client.nextEvent(timeout: 0.3) == nil)
        let eventElapsed = ContinuousClock.now - eventStart
        #expect(eventElapsed >= .milliseconds(250) && eventElapsed < .seconds(2), "nextEvent waited about its timeout")
    }

    @Test("no greeting is a timeout, something else first is a protocol violation")
    func badGreeting() throws {
        let silent = try FakeQMPServer { connection in connection.waitForClose() }
        let timeoutError = #expect(throws: QMPError.self) { _ = try QMPClient(socketPath: silent.path, timeout: 0.3) }
        #expect(timeoutError == .timeout(step: "greeting", seconds: 0.3))
        silent.finish()

        let wrong = try FakeQMPServer { connection in
            connection.send(#"{"return": {}}"#)
            connection.waitForClose()
        }
        let violation = #expect(throws: QMPError.self) { _ = try QMPClient(socketPath: wrong.path, timeout: 5) }
        guard case .protocolViolation? = violation else { Issue.record("got \(String(describing: violation))"); return }
        wrong.finish()
    }

    @Test("no socket is a connect error naming the path")
    func noSocket() {
        let path = NSTemporaryDirectory() + "swiftlet-qmp-missing-\(UInt32.random(in: 0...UInt32.max)).sock"
        let error = #expect(throws: QMPError.self) { _ = try QMPClient(socketPath: path) }
        guard case .connect(let failedPath, let cause)? = error else { Issue.record("got \(String(describing: error))"); return }
        #expect(failedPath == path)
        #expect(cause.errno == .noEntry)
    }

    @Test("a line longer than 1 MiB is a protocol violation, and the client stays failed")
    func overlongLine() throws {
        let server = try FakeQMPServer { connection in
            connection.handshake()
            _ = connection.expect("query-status")
            connection.sendRaw([UInt8](repeating: UInt8(ascii: "x"), count: (1 << 20) + 100))
            connection.waitForClose()
        }
        defer { server.finish() }
        let client = try QMPClient(socketPath: server.path)
        defer { client.close() }
        let error = #expect(throws: QMPError.self) { try client.execute("query-status") }
        guard case .protocolViolation? = error else { Issue.record("got \(String(describing: error))"); return }
        let again = #expect(throws: QMPError.self) { try client.nextEvent(timeout: 0) }
        #expect(again == error, "the failure is sticky")
    }

    @Test("at most 256 events are queued, the oldest dropped")
    func boundedQueue() throws {
        let server = try FakeQMPServer { connection in
            connection.handshake()
            guard let id = connection.expect("query-cpus-fast") else { return }
            for index in 0..<300 { connection.send(#"{"event": "E\#(index)"}"#) }
            connection.send(#"{"return": [{"cpu-index": 0}, {"cpu-index": 1}], "id": \#(id)}"#)
            connection.waitForClose()
        }
        defer { server.finish() }
        let client = try QMPClient(socketPath: server.path)
        defer { client.close() }
        #expect(try client.queryCPUCount() == 2)
        var names: [String] = []
        while let event = try client.nextEvent(timeout: 0) { names.append(event.name) }
        #expect(names == (44..<300).map { "E\($0)" })
    }

    @Test("close from another thread wakes a blocked nextEvent with .closed")
    func closeWakesWaiter() throws {
        let server = try FakeQMPServer { connection in
            connection.handshake()
            connection.waitForClose()
        }
        defer { server.finish() }
        let client = try QMPClient(socketPath: server.path)
        let outcome = Mutex<Result<QMPEvent?, QMPError>?>(nil)
        let waiter = try HostThread(name: "qmp-waiter") {
            let result = Result { () throws(QMPError) in try client.nextEvent(timeout: 30) }
            outcome.withLock { $0 = result }
        }
        usleep(200_000)
        let start = ContinuousClock.now
        client.close()
        waiter.join()
        #expect(ContinuousClock.now - start < .seconds(5), "close woke the waiter promptly")
        let result = outcome.withLock { $0 }
        guard case .failure(.closed)? = result else { Issue.record("got \(String(describing: result))"); return }
    }
}
