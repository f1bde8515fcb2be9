import CKVM
import Glibc
import HostSystem
import Synchronization

/// Why the control socket could not be set up.
public enum APIServerError: Error, Sendable, CustomStringConvertible {
    case pathTooLong(String)
    case inUse(String)
    case notASocket(String)
    case socket(step: String, cause: SystemCallError)

    public var description: String {
        switch self {
        case let .pathTooLong(path): "API socket path '\(path)' is longer than 107 bytes"
        case let .inUse(path): "Failed to open the API socket at: \(path). Check that it is not already used: another process is listening on it (is another swiftlet-vmm running?)"
        case let .notASocket(path): "API socket '\(path)' exists and is not a socket; refusing to replace it"
        case let .socket(step, cause): "API socket: \(step): \(cause)"
        }
    }
}

/// The control API's HTTP/1.1 server on a Unix socket (mode 0600), on one
/// thread of its own: an epoll loop over the listening socket, the clients
/// (non-blocking, keep-alive, pipelining) and a wake-up eventfd. Requests go
/// to the `InstanceController`; nothing here blocks a vCPU.
///
/// Silent clients cannot lock out management: a connection must complete
/// each request (and a keep-alive one its next) within `idleTimeout` or it
/// is closed, and a client arriving when all slots are taken evicts the
/// connection that has waited longest for a request.
public final class APIServer: Sendable {
    /// At most this many clients at once; one more evicts the longest-idle.
    public static let maximumConnections = 64
    /// Firecracker's clients keep connections alive between calls; a minute
    /// of silence is far past any of their pauses between requests.
    public static let defaultIdleTimeout: Duration = .seconds(60)
    /// Nanoseconds a connection may go without completing a request.
    let idleTimeoutNanoseconds: UInt64
    /// Unsent responses beyond this stop request processing for a client until it reads.
    let outputHighWater: Int

    public let path: String
    let listener: OwnedFileDescriptor
    /// The socket file's inode, so that only our own socket is removed at exit.
    let socketInode: UInt64
    let wake: EventFD
    let stopRequested = Atomic<Bool>(false)
    let thread = Mutex<HostThread?>(nil)
    let controller: InstanceController
    let parser: HTTPRequestParser

    /// Creates the socket at `path` (removing a stale one) and starts serving.
    public init(path: String, controller: InstanceController, limits: HTTPRequestParser.Limits = .init(),
                outputHighWater: Int = 1 << 20, idleTimeout: Duration = APIServer.defaultIdleTimeout) throws(APIServerError) {
        self.path = path
        let (seconds, attoseconds) = idleTimeout.components
        idleTimeoutNanoseconds = UInt64(clamping: max(seconds, 0)) &* 1_000_000_000 &+ UInt64(clamping: max(attoseconds, 0) / 1_000_000_000)
        self.outputHighWater = outputHighWater
        self.controller = controller
        parser = HTTPRequestParser(limits: limits)
        (listener, socketInode) = try Self.listen(path: path)
        do {
            wake = try EventFD()
        } catch {
            throw .socket(step: "eventfd", cause: error)
        }
        let epoll: Epoll
        do {
            epoll = try Epoll()
            try epoll.add(listener.rawValue, token: Self.listenerToken)
            try epoll.add(wake.descriptor.rawValue, token: Self.wakeToken)
        } catch {
            throw .socket(step: "epoll", cause: error)
        }
        do {
            let started = try HostThread(name: "api") { [self] in self.serve(epoll) }
            thread.withLock { $0 = started }
        } catch {
            throw .socket(step: "starting the API thread", cause: error)
        }
    }

    /// Stops serving: responses already produced are flushed (briefly), the
    /// thread is joined and the socket file removed.
    public func shutdown() {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        try? wake.signal()
        let running = thread.withLock { current -> HostThread? in
            defer { current = nil }
            return current
        }
        running?.join()
        var status = stat()
        if lstat(path, &status) == 0, UInt64(status.st_ino) == socketInode { unlink(path) }
    }

    static let listenerToken: UInt64 = 0
    static let wakeToken: UInt64 = 1

    // MARK: Socket setup

    static func listen(path: String) throws(APIServerError) -> (OwnedFileDescriptor, UInt64) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !pathBytes.isEmpty, pathBytes.count < capacity else { throw .pathTooLong(path) }
        // SAFETY: copies pathBytes.count < capacity bytes into the fixed-size sun_path tuple, leaving a NUL.
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
        }

        try removeStaleSocket(path: path, address: address)

        let socketFD: Int32
        do {
            socketFD = try systemCall("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        } catch {
            throw .socket(step: "socket", cause: error)
        }
        let descriptor = OwnedFileDescriptor(adopting: socketFD)
        // Mode 0600 from the start: no moment when others could connect.
        let previousMask = umask(0o177)
        // SAFETY: address is a sockaddr_un passed with its own size.
        let bindResult = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socketFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let bindErrno = Errno.current
        umask(previousMask)
        do throws(SystemCallError) {
            if bindResult != 0 { throw SystemCallError(call: "bind \(path)", errno: bindErrno) }
            _ = try systemCall("chmod \(path)") { chmod(path, 0o600) }
            _ = try systemCall("listen") { Glibc.listen(socketFD, 64) }
        } catch {
            if error.errno.rawValue == EADDRINUSE { throw .inUse(path) }
            throw .socket(step: "binding \(path)", cause: error)
        }
        var status = stat()
        guard lstat(path, &status) == 0 else { throw .socket(step: "stat \(path)", cause: SystemCallError(call: "lstat", errno: .current)) }
        return (descriptor, UInt64(status.st_ino))
    }

    /// A socket file nobody listens on is left by a VMM that died: remove
    /// it. A live listener, or a file that is not a socket, is refused.
    static func removeStaleSocket(path: String, address: sockaddr_un) throws(APIServerError) {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket(path) }
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { throw .socket(step: "socket", cause: SystemCallError(call: "socket", errno: .current)) }
        defer { close(probe) }
        var address = address
        // SAFETY: address is a sockaddr_un passed with its own size.
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if connected == 0 { throw .inUse(path) }
        unlink(path)
    }

    // MARK: The API thread

    final class Connection {
        let descriptor: OwnedFileDescriptor
        var input: [UInt8] = []
        var output: [UInt8] = []
        var sentContinue = false
        var closeAfterOutput = false
        var peerClosed = false
        /// `process` stopped because too much output was queued.
        var lastProcessHeldBack = false
        /// Monotonic nanoseconds by which the next request must be complete
        /// (pushed back by each answered request and by output the client reads).
        var deadline: UInt64

        init(descriptor: OwnedFileDescriptor, deadline: UInt64) {
            self.descriptor = descriptor
            self.deadline = deadline
        }
    }

    private func serve(_ epoll: Epoll) {
        var connections: [UInt64: Connection] = [:]
        var nextToken: UInt64 = 2
        let clientEvents = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
        // Connections with work left after their turn: served again, in
        // turn, before the loop sleeps (edge-triggered epoll will not report
        // them again), so one busy client cannot starve the others or the stop.
        var pending: [UInt64] = []
        func serveTurn(_ token: UInt64) {
            guard let connection = connections[token] else { return }
            switch service(connection) {
            case .closed:
                try? epoll.remove(connection.descriptor.rawValue)
                connections[token] = nil
            case .idle:
                break
            case .moreWork:
                if !pending.contains(token) { pending.append(token) }
            }
        }
        func close(_ token: UInt64) {
            guard let connection = connections.removeValue(forKey: token) else { return }
            try? epoll.remove(connection.descriptor.rawValue)
            pending.removeAll { $0 == token }
        }
        while !stopRequested.load(ordering: .relaxed) {
            var timeout: Int32 = pending.isEmpty ? -1 : 0
            let connectionDeadline = connections.values.lazy.map(\.deadline).min()
            if pending.isEmpty, let deadline = [controller.nextDeadline, connectionDeadline].compactMap({ $0 }).min() {
                let now = InstanceController.monotonicNow()
                timeout = deadline <= now ? 0 : Int32(clamping: (deadline - now) / 1_000_000 + 1)
            }
            let events = (try? epoll.wait(maxEvents: 64, timeout: timeout)) ?? []
            var turns = pending
            pending.removeAll()
            for event in events {
                switch event.token {
                case Self.listenerToken:
                    while let client = acceptClient() {
                        if connections.count >= Self.maximumConnections,
                           let (oldest, _) = connections.min(by: { $0.value.deadline < $1.value.deadline }) {
                            close(oldest)
                            turns.removeAll { $0 == oldest }
                        }
                        let token = nextToken
                        nextToken += 1
                        guard (try? epoll.add(client.rawValue, events: clientEvents, token: token)) != nil else { continue }
                        connections[token] = Connection(descriptor: client, deadline: InstanceController.monotonicNow() &+ idleTimeoutNanoseconds)
                        // Edge-triggered: serve what may already be waiting.
                        if !turns.contains(token) { turns.append(token) }
                    }
                case Self.wakeToken:
                    _ = try? wake.consume()
                default:
                    if !turns.contains(event.token) { turns.append(event.token) }
                }
            }
            for token in turns {
                if stopRequested.load(ordering: .relaxed) { break }
                serveTurn(token)
            }
            let now = InstanceController.monotonicNow()
            // Silent, slow (a request trickled in) or not reading: closed.
            for (token, connection) in connections where connection.deadline <= now { close(token) }
            controller.tick(now: now)
        }
        // Last words: whatever responses are queued (e.g. to the Stop that ended the VM).
        for connection in connections.values where !connection.output.isEmpty { _ = flush(connection) }
    }

    private func acceptClient() -> OwnedFileDescriptor? {
        while true {
            let fd = accept(listener.rawValue, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                return OwnedFileDescriptor(adopting: fd)
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    /// What a connection's turn left.
    enum TurnOutcome { case closed, idle, moreWork }

    /// One turn: reads what fits, answers what is complete, writes what it
    /// can. A turn is bounded (one input buffer's worth), so a client that
    /// never stops sending gets `.moreWork` and waits for its next turn.
    func service(_ connection: Connection) -> TurnOutcome {
        var buffer = [UInt8](repeating: 0, count: 16 << 10)
        let inputLimit = parser.limits.maximumHeaderBytes + parser.limits.maximumBodyBytes + 4096
        var drained = false
        // Read while there is room; a client that floods waits for its answers.
        while !connection.peerClosed && !connection.closeAfterOutput && connection.input.count < inputLimit {
            // SAFETY: reads into buffer's own storage, at most its size.
            let count = buffer.withUnsafeMutableBytes { raw in recv(connection.descriptor.rawValue, raw.baseAddress, raw.count, 0) }
            if count > 0 {
                connection.input += buffer[..<count]
            } else if count == 0 {
                connection.peerClosed = true
            } else if errno == EINTR {
                continue
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                drained = true
                break
            } else {
                return .closed
            }
        }
        process(connection)
        guard flush(connection) else { return .closed }
        if connection.closeAfterOutput && connection.output.isEmpty { return .closed }
        if connection.peerClosed && connection.output.isEmpty { return .closed }
        if connection.peerClosed || connection.closeAfterOutput { return .idle }
        // More may be waiting in the socket (the buffer filled before EAGAIN),
        // or answers were held back by unsent output that has now gone out:
        // edge-triggered epoll would not say so, so ask for another turn.
        let unread = !drained && connection.output.count < outputHighWater
        let heldBack = connection.lastProcessHeldBack && connection.output.count < outputHighWater
        return unread || heldBack ? .moreWork : .idle
    }

    /// Parses and answers every complete request in the input buffer.
    func process(_ connection: Connection) {
        connection.lastProcessHeldBack = false
        defer { connection.lastProcessHeldBack = connection.output.count >= outputHighWater && !connection.input.isEmpty }
        while !connection.closeAfterOutput && connection.output.count < outputHighWater && !connection.input.isEmpty {
            do {
                switch try parser.parse(connection.input[...]) {
                case .needHeaders:
                    if connection.peerClosed { connection.input.removeAll() }
                    return
                case let .needBody(_, expectsContinue):
                    if expectsContinue && !connection.sentContinue {
                        connection.output += Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
                        connection.sentContinue = true
                    }
                    if connection.peerClosed { connection.input.removeAll() }
                    return
                case let .request(request, consumed):
                    connection.input.removeFirst(consumed)
                    connection.sentContinue = false
                    connection.deadline = InstanceController.monotonicNow() &+ idleTimeoutNanoseconds
                    let response = controller.handle(request)
                    connection.output += response.serialized(keepAlive: request.keepAlive)
                    if !request.keepAlive || response.closesConnection { connection.closeAfterOutput = true }
                }
            } catch {
                connection.output += HTTPResponse.fault(error.status, error.message, closesConnection: true).serialized(keepAlive: false)
                connection.input.removeAll()
                connection.closeAfterOutput = true
            }
        }
    }

    /// Writes queued output; false on a broken connection.
    func flush(_ connection: Connection) -> Bool {
        var written = 0
        defer {
            if written > 0 {
                connection.output.removeFirst(written)
                // A client reading a long answer is not idle.
                connection.deadline = InstanceController.monotonicNow() &+ idleTimeoutNanoseconds
            }
        }
        while written < connection.output.count {
            // SAFETY: sends bytes from output's own storage, within its bounds. MSG_NOSIGNAL: a vanished client must not SIGPIPE the VMM.
            let count = connection.output.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return send(connection.descriptor.rawValue, base + written, raw.count - written, Int32(MSG_NOSIGNAL))
            }
            if count > 0 {
                written += count
            } else if count < 0 && errno == EINTR {
                continue
            } else if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                return true
            } else {
                return false
            }
        }
        return true
    }
}
