#if canImport(AgentProtocol)
import AgentProtocol
#endif
import CAgentSys

/// swiftlet-agent: the guest side of `swiftlet exec`, `cp`, `guest-info`
/// and `swiftlet run` (docs/agent.md).
@main
struct AgentMain {
    static let version = "0.1.0"
    static let usage = """
        usage: swiftlet-agent [--listen vsock:PORT | --listen unix:PATH] [--max-connections N] [--busybox PATH]
          --listen           where to accept connections (default vsock:1024)
          --max-connections  connections served at once; more are answered `busy` (default 64)
          --busybox          run argv[0] as an applet of this busybox when PATH has no such program
        """

    static func main() {
        agent_ignore_sigpipe()
        var listen = "vsock:\(AgentFrame.defaultPort)"
        var limit: Int32 = 64
        var busybox: String?
        var arguments = commandLineArguments().dropFirst().makeIterator()
        while let argument = arguments.next() {
            switch argument {
            case "--listen":
                guard let value = arguments.next() else { fail("--listen needs vsock:PORT or unix:PATH") }
                listen = value
            case "--max-connections":
                guard let value = arguments.next(), let number = Int32(value), number > 0 else {
                    fail("--max-connections needs a whole number above 0")
                }
                limit = number
            case "--busybox":
                guard let value = arguments.next() else { fail("--busybox needs a path") }
                busybox = value
            case "-h", "--help":
                print(usage)
                return
            case "--version":
                print("swiftlet-agent " + version)
                return
            default:
                fail("unknown argument '\(argument)'\n" + usage)
            }
        }
        let listener: Int32
        if listen.hasPrefix("vsock:"), let port = UInt32(listen.dropFirst(6)) {
            listener = agent_listen_vsock(port, 128)
        } else if listen.hasPrefix("unix:"), listen.count > 5 {
            listener = agent_listen_unix(String(listen.dropFirst(5)), 128)
        } else {
            fail("--listen '\(listen)': expected vsock:PORT or unix:PATH")
        }
        guard listener >= 0 else { fail("listen on \(listen): \(errorText(-listener))") }
        let server = Server(busybox: busybox, limit: limit)
        while true {
            let fd = agent_accept(listener)
            if fd < 0 {
                let code = agent_errno()
                if code != EINTR && code != ECONNABORTED {
                    log.line("accept: \(errorText(code))")
                    usleep(10_000)
                }
                continue
            }
            server.serve(fd)
        }
    }

    /// argv, from /proc/self/cmdline: Embedded Swift has no CommandLine.
    static func commandLineArguments() -> [String] {
        let fd = agent_open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC, 0)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            // SAFETY: read writes at most the buffer's length.
            let count = buffer.withUnsafeMutableBufferPointer { read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
        }
        return bytes.split(separator: 0, omittingEmptySubsequences: false).dropLast().map { String(decoding: $0, as: UTF8.self) }
    }

    static func fail(_ message: String) -> Never {
        let bytes = Array(("swiftlet-agent: " + message + "\n").utf8)
        // SAFETY: the buffer lives for the call.
        _ = bytes.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count) }
        exit(2)
    }
}

/// Serves each connection on its own thread, up to `limit` at once.
final class Server {
    let busybox: String?
    let limit: Int32
    private let active = UnsafeMutablePointer<Int32>.allocate(capacity: 1)

    init(busybox: String?, limit: Int32) {
        self.busybox = busybox
        self.limit = limit
        active.initialize(to: 0)
    }

    func serve(_ fd: Int32) {
        let connection = Connection(fd: fd)
        if agent_atomic_add(active, 1) > limit {
            _ = agent_atomic_add(active, -1)
            // Answered on this thread: a short write to a fresh socket.
            connection.sendError(.refused(.busy, "the agent serves \(limit) connections at once; retry later"))
            return
        }
        let job = Job(server: self, connection: connection)
        let result = agent_start_thread({ context in
            guard let context else { return nil }
            Unmanaged<Job>.fromOpaque(context).takeRetainedValue().run()
            return nil
        }, Unmanaged.passRetained(job).toOpaque())
        if result != 0 {
            // SAFETY: the thread did not start, so the retain passed to it is ours to release.
            Unmanaged.passUnretained(job).release()
            _ = agent_atomic_add(active, -1)
            connection.sendError(.system(step: "start a thread", errno: result))
        }
    }

    fileprivate func finished() { _ = agent_atomic_add(active, -1) }

    /// One connection: the handshake, then one request.
    func handle(_ connection: Connection) throws(AgentError) {
        let hello = try connection.receiveMessage()
        guard case .hello(let version) = hello else {
            throw .protocolViolation(.unexpectedFrame(hello.type, expected: "hello"))
        }
        guard version == AgentFrame.protocolVersion else {
            throw .refused(.unsupportedVersion, AgentProtocolError.unsupportedVersion(version).description)
        }
        try connection.send(.helloReply(version: AgentFrame.protocolVersion, agentVersion: AgentMain.version))
        let request = try connection.receiveMessage()
        switch request {
        case .ping(let token):
            try connection.send(.pong(token: token))
        case .info:
            try connection.send(.infoReply(GuestInfoReader.read(agentVersion: AgentMain.version)))
        case .exec(let exec):
            try ExecSession(connection: connection, request: exec, busybox: busybox).run()
        case .putFile(let path, let mode, let size):
            try FileTransfer.put(path: path, mode: mode, size: size, on: connection)
        case .getFile(let path):
            try FileTransfer.get(path: path, on: connection)
        case .shutdown(let reboot):
            try connection.send(.done)
            log.line(reboot ? "rebooting the guest, as asked" : "powering the guest off, as asked")
            _ = agent_power_off(reboot ? 1 : 0)
        default:
            throw .protocolViolation(.unexpectedFrame(request.type, expected: "a request (ping, info, exec, put-file, get-file, shutdown)"))
        }
    }
}

final class Job {
    let server: Server
    let connection: Connection

    init(server: Server, connection: Connection) {
        self.server = server
        self.connection = connection
    }

    func run() {
        defer { server.finished() }
        do {
            try server.handle(connection)
        } catch {
            switch error {
            case .closed:
                break
            case .refused, .system:
                connection.sendError(error)
            case .protocolViolation:
                log.line("connection refused: " + error.message)
                connection.sendError(error)
            }
        }
    }
}
