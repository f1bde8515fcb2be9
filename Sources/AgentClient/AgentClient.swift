import AgentProtocol
import HostSystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The host side of docs/agent.md: one connection per request, against an
/// endpoint (a VMM's vsock socket).
public struct AgentClient: Sendable {
    public let endpoint: AgentEndpoint
    /// Seconds for connecting and the handshake (docs/agent.md, "Timeouts").
    public var timeout: Double

    public init(endpoint: AgentEndpoint, timeout: Double = 10) {
        self.endpoint = endpoint
        self.timeout = timeout
    }

    func connect() throws(AgentClientError) -> AgentConnection {
        try AgentConnection.open(endpoint, timeout: timeout)
    }

    /// The round trip of a `ping`.
    public func ping() throws(AgentClientError) {
        let connection = try connect()
        try connection.send(.ping(token: 0x5357_4946_544c_4554))
        let reply = try connection.receive(step: "ping", timeout: timeout)
        guard case .pong = reply else { throw Self.unexpected(reply, step: "ping") }
    }

    public func info() throws(AgentClientError) -> GuestInfo {
        let connection = try connect()
        try connection.send(.info)
        let reply = try connection.receive(step: "info", timeout: timeout)
        guard case .infoReply(let info) = reply else { throw Self.unexpected(reply, step: "info") }
        return info
    }

    /// Asks the guest to power off (or reboot); returns once the agent agreed.
    public func shutdown(reboot: Bool = false) throws(AgentClientError) {
        let connection = try connect()
        try connection.send(.shutdown(reboot: reboot))
        let reply = try connection.receive(step: "shutdown", timeout: timeout)
        guard case .done = reply else { throw Self.unexpected(reply, step: "shutdown") }
    }

    /// Copies the local file at `localPath` to `remotePath` in the guest
    /// with `mode` (default: the local file's permissions).
    public func put(localPath: String, remotePath: String, mode: UInt32? = nil,
                    progress: (UInt64, UInt64) -> Void = { _, _ in }) throws(AgentClientError) {
        let file: OwnedFileDescriptor
        let status: stat
        do {
            file = try OwnedFileDescriptor.open(localPath, flags: O_RDONLY)
            status = try file.status()
        } catch {
            throw .localFile(path: localPath, cause: error)
        }
        let size = UInt64(status.st_size)
        let connection = try connect()
        try connection.send(.putFile(path: remotePath, mode: mode ?? UInt32(status.st_mode & 0o7777), size: size))
        do {
            try sendFile(file, size: size, path: localPath, over: connection, progress: progress)
        } catch {
            // The agent refuses early (a missing folder) and closes: its
            // error frame says why better than our failed write.
            if case .closed = error, let reply = try? connection.receive(step: "put-file \(remotePath)", timeout: 2),
               case .error(let code, let text) = reply {
                throw .agent(code: code, message: text)
            }
            throw error
        }
        let reply = try connection.receive(step: "put-file \(remotePath)")
        guard case .done = reply else { throw Self.unexpected(reply, step: "put-file \(remotePath)") }
    }

    private func sendFile(_ file: OwnedFileDescriptor, size: UInt64, path localPath: String, over connection: AgentConnection,
                          progress: (UInt64, UInt64) -> Void) throws(AgentClientError) {
        var buffer = [UInt8](repeating: 0, count: AgentFrame.dataChunk)
        var sent: UInt64 = 0
        while sent < size {
            let count: Int
            do {
                count = try systemCall("read") {
                    // SAFETY: read(2) writes at most the buffer's length.
                    buffer.withUnsafeMutableBytes { Glibc.read(file.rawValue, $0.baseAddress, $0.count) }
                }
            } catch {
                throw .localFile(path: localPath, cause: error)
            }
            guard count > 0 else { break }
            let chunk = Int(min(UInt64(count), size - sent))
            try connection.send(.data(Array(buffer[0..<chunk])))
            sent += UInt64(chunk)
            progress(sent, size)
        }
        if sent < size { try connection.send(.data([])) }
    }

    /// Copies `remotePath` from the guest to `localPath`, through a
    /// temporary file renamed into place: a failed copy leaves no partial file.
    public func get(remotePath: String, localPath: String,
                    progress: (UInt64, UInt64) -> Void = { _, _ in }) throws(AgentClientError) {
        let connection = try connect()
        try connection.send(.getFile(path: remotePath))
        let first = try connection.receive(step: "get-file \(remotePath)", timeout: timeout)
        guard case .fileInfo(let mode, let size) = first else { throw Self.unexpected(first, step: "get-file \(remotePath)") }
        let temporary = localPath + ".swiftlet-part-\(getpid())"
        let file: OwnedFileDescriptor
        do {
            file = try OwnedFileDescriptor.open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: mode_t(mode & 0o7777))
        } catch {
            throw .localFile(path: temporary, cause: error)
        }
        var completed = false
        defer { if !completed { unlink(temporary) } }
        var received: UInt64 = 0
        while true {
            let message = try connection.receive(step: "get-file \(remotePath)")
            switch message {
            case .data(let bytes):
                guard UInt64(bytes.count) <= size - received else {
                    throw .malformed(.invalidField(field: "data beyond the file's size", value: received + UInt64(bytes.count)))
                }
                do {
                    try file.writeAll(bytes)
                } catch {
                    throw .localFile(path: temporary, cause: error)
                }
                received += UInt64(bytes.count)
                progress(received, size)
            case .done:
                guard received == size else { throw .closed(step: "get-file \(remotePath) (\(received) of \(size) bytes)") }
                do {
                    _ = try systemCall("fsync") { fsync(file.rawValue) }
                    _ = try systemCall("rename") { rename(temporary, localPath) }
                } catch {
                    throw .localFile(path: localPath, cause: error)
                }
                completed = true
                return
            default:
                throw Self.unexpected(message, step: "get-file \(remotePath)")
            }
        }
    }

    /// How an exec's local side is wired.
    public struct ExecStreams: Sendable {
        /// Forwarded as the process's stdin (with `request.forwardsStdin`).
        public var stdin: Int32?
        public var stdout: Int32
        public var stderr: Int32
        /// Signals forwarded to the process. The caller blocks them in every
        /// thread (`blockForwardedSignals`) before calling `exec`; SIGWINCH
        /// sends the terminal's size instead (TTY sessions).
        public var forwardedSignals: [Int32]

        public init(stdin: Int32? = 0, stdout: Int32 = 1, stderr: Int32 = 2, forwardedSignals: [Int32] = []) {
            self.stdin = stdin
            self.stdout = stdout
            self.stderr = stderr
            self.forwardedSignals = forwardedSignals
        }
    }

    /// Blocks `signals` in the calling thread (threads started later inherit
    /// that), so that `exec` can receive them with sigtimedwait.
    public static func blockForwardedSignals(_ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for number in signals { sigaddset(&set, number) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Runs `request` in the guest; returns how it ended. Output is copied
    /// as it arrives; stdin is read on its own thread, so neither direction
    /// waits for the other.
    public func exec(_ request: ExecRequest, streams: ExecStreams = ExecStreams()) throws(AgentClientError) -> ExitStatus {
        let connection = try connect()
        try connection.send(.exec(request))
        let first = try connection.receive(step: "starting \(request.arguments[0])", timeout: timeout)
        guard case .started = first else { throw Self.unexpected(first, step: "starting \(request.arguments[0])") }
        let finished = Atomic<Bool>(false)
        var threads: [HostThread] = []
        defer {
            finished.store(true, ordering: .releasing)
            // The stdin reader may sit in read(2) on a terminal: it is not
            // joined, the process ends after the command anyway.
        }
        if request.forwardsStdin, let input = streams.stdin {
            if let thread = try? HostThread(name: "agent-stdin", { Self.forwardInput(input, to: connection, finished: finished) }) {
                threads.append(thread)
            }
        }
        if !streams.forwardedSignals.isEmpty {
            let signals = streams.forwardedSignals
            let terminal = request.terminal
            if let thread = try? HostThread(name: "agent-signals", {
                Self.forwardSignals(signals, terminal: terminal, to: connection, finished: finished)
            }) {
                threads.append(thread)
            }
        }
        var outputBroken = false
        while true {
            let message = try connection.receive(step: "running \(request.arguments[0])")
            switch message {
            case .stdout(let bytes), .stderr(let bytes):
                guard !outputBroken else { continue }
                let fd: Int32
                if case .stdout = message { fd = streams.stdout } else { fd = streams.stderr }
                if !Self.writeLocal(fd, bytes) {
                    // Our reader went away (`| head`): the process gets the
                    // SIGPIPE it would have had locally.
                    outputBroken = true
                    try? connection.send(.signal(SIGPIPE))
                }
            case .exit(let status):
                finished.store(true, ordering: .releasing)
                for thread in threads where thread.hasFinished { thread.join() }
                return status
            case .error(let code, let text):
                throw .agent(code: code, message: text)
            default:
                throw Self.unexpected(message, step: "running \(request.arguments[0])")
            }
        }
    }

    private static func forwardInput(_ fd: Int32, to connection: AgentConnection, finished: borrowing Atomic<Bool>) {
        var buffer = [UInt8](repeating: 0, count: AgentFrame.dataChunk)
        while !finished.load(ordering: .acquiring) {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                try? connection.send(.stdin([]))
                return
            }
            do {
                try connection.send(.stdin(Array(buffer[0..<count])))
            } catch {
                return
            }
        }
    }

    private static func forwardSignals(_ signals: [Int32], terminal: Bool, to connection: AgentConnection, finished: borrowing Atomic<Bool>) {
        var set = sigset_t()
        sigemptyset(&set)
        for number in signals { sigaddset(&set, number) }
        var wait = timespec(tv_sec: 0, tv_nsec: 200_000_000)
        while !finished.load(ordering: .acquiring) {
            let number = sigtimedwait(&set, nil, &wait)
            guard number > 0 else { continue }
            if number == SIGWINCH {
                if terminal, let size = terminalSize() { try? connection.send(.resize(rows: size.rows, columns: size.columns)) }
            } else {
                try? connection.send(.signal(number))
            }
        }
    }

    /// The size of the terminal on stdin or stdout, if either is one.
    public static func terminalSize() -> (rows: UInt16, columns: UInt16)? {
        var size = winsize()
        for fd: Int32 in [1, 0] where ioctl(fd, UInt(TIOCGWINSZ), &size) == 0 && size.ws_row > 0 {
            return (size.ws_row, size.ws_col)
        }
        return nil
    }

    /// Writes all of `bytes`; false when the reader is gone (EPIPE).
    private static func writeLocal(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let start = offset
            // SAFETY: `start` is inside the array, alive for the call.
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + start, $0.count - start) }
            if written < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += written
        }
        return true
    }

    static func unexpected(_ message: AgentMessage, step: String) -> AgentClientError {
        if case .error(let code, let text) = message { return .agent(code: code, message: text) }
        return .unexpected(message.type, step: step)
    }
}
