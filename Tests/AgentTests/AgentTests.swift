import AgentClient
import AgentProtocol
import Foundation
import HostSystem
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// swiftlet-agent run on the host (`--listen unix:PATH`), driven through
/// AgentClient: the protocol of docs/agent.md end to end, without a guest.
final class HostAgent {
    let folder: String
    let socketPath: String
    let process = Process()
    var client: AgentClient { AgentClient(endpoint: .unixSocket(path: socketPath), timeout: 10) }

    init(_ extraArguments: [String] = []) throws {
        folder = NSTemporaryDirectory() + "swiftlet-agent-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        socketPath = folder + "/agent.sock"
        let runner = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        process.executableURL = URL(fileURLWithPath: runner).deletingLastPathComponent().appendingPathComponent("swiftlet-agent")
        process.arguments = ["--listen", "unix:" + socketPath] + extraArguments
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: socketPath) && Date() < deadline { usleep(5_000) }
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: folder)
    }

    func connection() throws -> AgentConnection { try AgentConnection.open(.unixSocket(path: socketPath), timeout: 10) }
}

/// A pipe whose read end a thread drains into a checksum (FNV-1a) and a byte count.
final class DrainedPipe: @unchecked Sendable {
    let readEnd: Int32
    let writeEnd: Int32
    private(set) var checksum: UInt64 = 0xcbf2_9ce4_8422_2325
    private(set) var count = 0
    private(set) var text = Data()
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)

    init(keepsText: Bool = false) {
        var ends: [Int32] = [0, 0]
        pipe(&ends)
        readEnd = ends[0]
        writeEnd = ends[1]
        thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(readEnd, &buffer, buffer.count)
                if n <= 0 { break }
                for byte in buffer[0..<n] { checksum = (checksum ^ UInt64(byte)) &* 0x100_0000_01b3 }
                count += n
                if keepsText { text.append(contentsOf: buffer[0..<n]) }
            }
            close(readEnd)
            done.signal()
        }
        thread?.start()
    }

    /// Closes our write end and waits for the drain to finish.
    func finish() {
        close(writeEnd)
        done.wait()
    }

    var string: String { String(decoding: text, as: UTF8.self) }
}

@Suite("swiftlet-agent on the host", .serialized)
struct AgentTests {
    /// The code of an agent's `error` frame, if that is what `error` is.
    static func agentCode(_ error: any Error) -> AgentErrorCode? {
        guard let failure = error as? AgentClientError, case .agent(let code, _) = failure else { return nil }
        return code
    }

    @Test("ping, and info describes the machine")
    func pingAndInfo() throws {
        let agent = try HostAgent()
        try agent.client.ping()
        let info = try agent.client.info()
        #expect(info.kernel.hasPrefix("Linux "), "\(info)")
        #expect(info.cpus >= 1 && info.memoryTotalBytes > info.memoryAvailableBytes && info.memoryAvailableBytes > 0, "\(info)")
        #expect(info.uptimeMilliseconds > 0 && !info.agentVersion.isEmpty)
    }

    @Test("exec cat moves 64 MiB in and 64 MiB out, checksummed, with bounded buffers on both sides", .timeLimit(.minutes(5)))
    func largeStreams() throws {
        let agent = try HostAgent()
        var ends: [Int32] = [0, 0]
        pipe(&ends)
        var pattern = [UInt8](repeating: 0, count: 1 << 20)
        for index in pattern.indices { pattern[index] = UInt8(truncatingIfNeeded: index &* 31 &+ index >> 9) }
        let writeEnd = ends[1]
        let chunk = pattern
        let feeder = Thread {
            for _ in 0..<64 { _ = chunk.withUnsafeBytes { write(writeEnd, $0.baseAddress, $0.count) } }
            close(writeEnd)
        }
        feeder.start()
        let output = DrainedPipe()
        let errors = DrainedPipe()
        let status = try agent.client.exec(ExecRequest(arguments: ["cat"], forwardsStdin: true),
                                           streams: .init(stdin: ends[0], stdout: output.writeEnd, stderr: errors.writeEnd))
        close(ends[0])
        output.finish()
        errors.finish()
        #expect(status == .exited(0))
        #expect(output.count == 64 << 20)
        var expected: UInt64 = 0xcbf2_9ce4_8422_2325
        for _ in 0..<64 {
            for byte in pattern { expected = (expected ^ UInt64(byte)) &* 0x100_0000_01b3 }
        }
        #expect(output.checksum == expected)
        #expect(errors.count == 0)
    }

    @Test("exit codes and deaths by signal come back as they happened; stdout and stderr stay apart")
    func exitStatuses() throws {
        let agent = try HostAgent()
        for (script, expected) in [("exit 0", ExitStatus.exited(0)), ("exit 3", .exited(3)), ("kill -TERM $$", .signaled(SIGTERM))] {
            let output = DrainedPipe(keepsText: true), errors = DrainedPipe(keepsText: true)
            let status = try agent.client.exec(ExecRequest(arguments: ["sh", "-c", "echo out; echo err >&2; " + script]),
                                               streams: .init(stdin: nil, stdout: output.writeEnd, stderr: errors.writeEnd))
            output.finish()
            errors.finish()
            #expect(status == expected, "\(script)")
            #expect(output.string == "out\n" && errors.string == "err\n", "\(script): \(output.string) / \(errors.string)")
        }
    }

    @Test("a signal frame reaches the process; a missing program is notFound; env and cwd apply")
    func signalsAndErrors() throws {
        let agent = try HostAgent()
        let connection = try agent.connection()
        try connection.send(.exec(ExecRequest(arguments: ["sleep", "100"])))
        guard case .started = try connection.receive(step: "start", timeout: 10) else { Issue.record("no started frame"); return }
        try connection.send(.signal(SIGINT))
        #expect(try connection.receive(step: "exit", timeout: 10) == .exit(.signaled(SIGINT)))

        #expect(throws: AgentClientError.self) {
            try agent.client.exec(ExecRequest(arguments: ["no-such-program-\(getpid())"]), streams: .init(stdin: nil))
        }
        do {
            _ = try agent.client.exec(ExecRequest(arguments: ["no-such-program-\(getpid())"]), streams: .init(stdin: nil))
        } catch {
            #expect(Self.agentCode(error) == .notFound && "\(error)".contains("no-such-program"), "\(error)")
        }
        let output = DrainedPipe(keepsText: true)
        _ = try agent.client.exec(ExecRequest(arguments: ["sh", "-c", "echo $GREETING; pwd"], environment: ["GREETING=hi there"], workingDirectory: "/tmp"),
                                  streams: .init(stdin: nil, stdout: output.writeEnd))
        output.finish()
        #expect(output.string == "hi there\n/tmp\n", "\(output.string)")
    }

    @Test("a TTY session runs on a pseudo-terminal of the requested size")
    func terminal() throws {
        let agent = try HostAgent()
        let output = DrainedPipe(keepsText: true)
        let status = try agent.client.exec(ExecRequest(arguments: ["sh", "-c", "tty; stty size"], terminal: true, rows: 33, columns: 111),
                                           streams: .init(stdin: nil, stdout: output.writeEnd))
        output.finish()
        #expect(status == .exited(0))
        #expect(output.string.contains("/dev/pts/") && output.string.contains("33 111"), "\(output.string)")
    }

    @Test("put-file and get-file round-trip 5 MiB of binary with its mode; failures leave the old file")
    func files() throws {
        let agent = try HostAgent()
        var bytes = [UInt8](repeating: 0, count: 5 << 20)
        for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255) }
        let local = agent.folder + "/local.bin", remote = agent.folder + "/remote.bin", back = agent.folder + "/back.bin"
        #expect(FileManager.default.createFile(atPath: local, contents: Data(bytes)))
        try agent.client.put(localPath: local, remotePath: remote, mode: 0o640)
        try agent.client.get(remotePath: remote, localPath: back)
        #expect(try Data(contentsOf: URL(fileURLWithPath: back)) == Data(bytes))
        let mode = try FileManager.default.attributesOfItem(atPath: remote)[.posixPermissions] as? Int
        #expect(mode == 0o640)

        do {
            try agent.client.put(localPath: local, remotePath: agent.folder + "/missing/dir/file")
            Issue.record("a put into a missing folder succeeded")
        } catch {
            #expect(Self.agentCode(error) == .notFound, "\(error)")
        }
        // A transfer cut short: the old file stays whole, no temporary file is left.
        let connection = try agent.connection()
        try connection.send(.putFile(path: remote, mode: 0o600, size: 1000))
        try connection.send(.data([1, 2, 3]))
        connection.closeWrite()
        _ = try? connection.receive(step: "cut short", timeout: 10)
        usleep(100_000)
        #expect(try Data(contentsOf: URL(fileURLWithPath: remote)) == Data(bytes))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: agent.folder).filter { $0.contains("swiftlet-agent-") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test("20 execs at once each get their own output")
    func concurrentExecs() throws {
        let agent = try HostAgent()
        let client = agent.client
        let results = Mutex<[Int: String]>([:])
        DispatchQueue.concurrentPerform(iterations: 20) { index in
            let output = DrainedPipe(keepsText: true)
            let status = try? client.exec(ExecRequest(arguments: ["sh", "-c", "sleep 0.2; echo exec-\(index)"]),
                                                streams: .init(stdin: nil, stdout: output.writeEnd))
            output.finish()
            results.withLock { $0[index] = status == .exited(0) ? output.string : "failed" }
        }
        let all = results.withLock { $0 }
        for index in 0..<20 { #expect(all[index] == "exec-\(index)\n", "\(index): \(all[index] ?? "none")") }
    }

    @Test("a client that disconnects mid-stream takes its process group down; the agent serves on")
    func disconnectKillsProcess() throws {
        let agent = try HostAgent()
        let connection = try agent.connection()
        try connection.send(.exec(ExecRequest(arguments: ["yes"])))
        guard case .started(let pid) = try connection.receive(step: "start", timeout: 10) else { Issue.record("no started frame"); return }
        _ = try connection.receive(step: "output", timeout: 10)
        close(connection.socket.descriptor.rawValue)
        var gone = false
        for _ in 0..<200 where !gone {
            usleep(10_000)
            gone = kill(pid_t(pid), 0) != 0 && errno == ESRCH
        }
        #expect(gone, "yes (pid \(pid)) still runs")
        try agent.client.ping()
    }

    @Test("an agent killed mid-stream ends the client's exec with an error, not a hang", .timeLimit(.minutes(1)))
    func agentKilledMidStream() throws {
        let agent = try HostAgent()
        let client = agent.client
        let output = DrainedPipe()
        let pid = agent.process.processIdentifier
        let killer = Thread {
            usleep(300_000)
            kill(pid, SIGKILL)
        }
        killer.start()
        let started = Date()
        do {
            _ = try client.exec(ExecRequest(arguments: ["yes"]), streams: .init(stdin: nil, stdout: output.writeEnd))
            Issue.record("exec returned although the agent died")
        } catch {
            guard case .closed? = error as? AgentClientError else {
                Issue.record("expected a closed connection, got \(error)")
                return
            }
        }
        output.finish()
        #expect(Date().timeIntervalSince(started) < 10)
        #expect(output.count > 0, "output arrived before the agent died")
    }

    @Test("garbage, an oversized length and an unknown frame type get an error frame; the agent lives on")
    func malformedInput() throws {
        let agent = try HostAgent()
        for bytes: [UInt8] in [Array("GET / HTTP/1.1\r\n\r\n".utf8), [0xff, 0xff, 0xff, 0x7f, 0x10], [1, 0, 0, 0, 0x7e], AgentMessage.ping(token: 1).frame.encoded] {
            let socket = try UnixStreamSocket.connect(path: agent.socketPath)
            try socket.descriptor.writeAll(bytes)
            var decoder = FrameDecoder()
            var buffer = [UInt8](repeating: 0, count: 4096)
            var reply: AgentMessage?
            while reply == nil {
                let n = read(socket.descriptor.rawValue, &buffer, buffer.count)
                if n <= 0 { break }
                decoder.append(Array(buffer[0..<n]))
                if let frame = try decoder.next() { reply = try AgentMessage(frame: frame) }
            }
            guard case .error(let code, let message) = reply else {
                Issue.record("no error frame for \(bytes.prefix(8)): \(String(describing: reply))")
                continue
            }
            #expect(code == .badRequest, "\(message)")
            #expect(read(socket.descriptor.rawValue, &buffer, buffer.count) == 0, "closed after the error")
        }
        try agent.client.ping()
    }

    @Test("past --max-connections the agent answers busy")
    func busy() throws {
        let agent = try HostAgent(["--max-connections", "1"])
        let held = try agent.connection()
        defer { _ = held }
        do {
            try agent.client.ping()
            Issue.record("a second connection was served")
        } catch {
            #expect(Self.agentCode(error) == .busy, "\(error)")
        }
    }
}
