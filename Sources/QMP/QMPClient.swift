import Glibc
import HostSystem
import Synchronization

/// A blocking client for QEMU's Machine Protocol on a Unix socket
/// (`-qmp unix:PATH,server=on,wait=off`).
///
/// Meant for plain threads, never async code: every call blocks for at most
/// its timeout. One thread at a time uses a client (concurrent calls are
/// serialized, not interleaved); `close()` may come from any thread and wakes
/// a call blocked in `nextEvent` (it then throws `.closed`).
public final class QMPClient: Sendable {
    /// QEMU's version from the greeting, "major.minor.micro".
    public let version: String
    /// The capabilities the greeting offered (none are enabled).
    public let capabilities: [String]
    /// The default wait for an answer to `execute`.
    public let timeout: Double

    /// The stream state, held for a whole call so that calls never interleave.
    private let session: Mutex<QMPSession>
    /// Separate from `session` so `close()` need not wait for a blocked call.
    private let socket: Mutex<UnixStreamSocket?>

    /// Connects, reads the greeting and leaves capabilities negotiation
    /// mode with `qmp_capabilities`. Each step waits at most `timeout` seconds.
    public init(socketPath: String, timeout: Double = 5) throws(QMPError) {
        let connected: UnixStreamSocket
        do {
            // The connect helper takes whole seconds; it also bounds each send (SO_SNDTIMEO).
            let seconds = timeout.isFinite ? Int(min(max(timeout.rounded(.up), 1), 86_400)) : 86_400
            connected = try UnixStreamSocket.connect(path: socketPath, timeoutSeconds: seconds)
        } catch {
            throw .connect(path: socketPath, cause: error)
        }
        var session = QMPSession()
        guard let greeting = try session.readMessage(connected, deadline: Deadline(seconds: timeout), step: "greeting") else {
            throw .timeout(step: "greeting", seconds: timeout)
        }
        guard case .greeting(let version, let capabilities) = greeting else {
            throw .protocolViolation("the first message is not a QMP greeting")
        }
        _ = try session.execute(connected, command: "qmp_capabilities", arguments: nil, timeout: timeout)
        self.version = version
        self.capabilities = capabilities
        self.timeout = timeout
        self.session = Mutex(session)
        self.socket = Mutex(connected)
    }

    deinit { close() }

    /// Sends {"execute": command, "arguments": ..., "id": N} and returns the
    /// "return" value. Events arriving meanwhile are queued for `nextEvent`.
    public func execute(_ command: String, arguments: [String: QMPValue]? = nil) throws(QMPError) -> QMPValue {
        try execute(command, arguments: arguments, timeout: timeout)
    }

    /// `execute` with its own wait, for commands slower than the default.
    public func execute(_ command: String, arguments: [String: QMPValue]?, timeout: Double) throws(QMPError) -> QMPValue {
        let connected = try currentSocket(step: command)
        return try session.withLock { (session) throws(QMPError) -> QMPValue in
            try session.execute(connected, command: command, arguments: arguments, timeout: timeout)
        }
    }

    /// The next event, queued ones first; waits up to `timeout` seconds and
    /// returns nil if none came. Throws `.closed` once QEMU closed the socket
    /// (it exited) and no queued event is left.
    public func nextEvent(timeout: Double) throws(QMPError) -> QMPEvent? {
        try session.withLock { (session) throws(QMPError) -> QMPEvent? in
            if let queued = session.dequeueEvent() { return queued }
            let connected = try currentSocket(step: "waiting for an event")
            return try session.nextEvent(connected, deadline: Deadline(seconds: timeout))
        }
    }

    /// Closes the connection (idempotent). A call blocked on the socket in another thread is woken and throws `.closed`.
    public func close() {
        guard let connected = socket.withLock({ socket in socket.take() }) else { return }
        // shutdown wakes a blocked poll; the descriptor itself closes with the last reference, so its number cannot be reused under a running call.
        _ = try? systemCall("shutdown") { Glibc.shutdown(connected.descriptor.rawValue, Int32(SHUT_RDWR)) }
    }

    /// query-status: the run state ("running", "paused", "shutdown", ...) and whether vCPUs run.
    public func queryStatus() throws(QMPError) -> (status: String, running: Bool) {
        let result = try execute("query-status")
        guard let status = result["status"]?.string, let running = result["running"]?.bool else {
            throw .protocolViolation("query-status returned no status and running")
        }
        return (status, running)
    }

    /// query-cpus-fast: the number of vCPUs.
    public func queryCPUCount() throws(QMPError) -> Int {
        guard let cpus = try execute("query-cpus-fast").array else {
            throw .protocolViolation("query-cpus-fast returned no array")
        }
        return cpus.count
    }

    private func currentSocket(step: String) throws(QMPError) -> UnixStreamSocket {
        guard let connected = socket.withLock({ $0 }) else { throw .closed(step: step + " (the client was closed)") }
        return connected
    }
}

/// When a wait ends; nil `end` waits forever.
struct Deadline {
    let end: ContinuousClock.Instant?

    init(seconds: Double) {
        if seconds.isNaN || seconds <= 0 {
            end = .now
        } else if seconds.isFinite, seconds < 1e9 {
            end = ContinuousClock.now.advanced(by: .seconds(seconds))
        } else {
            end = nil
        }
    }

    /// Milliseconds left for poll(2), rounded up: -1 for forever, 0 once passed.
    var pollMilliseconds: Int32 {
        guard let end else { return -1 }
        let left = end - .now
        guard left > .zero else { return 0 }
        let (seconds, attoseconds) = left.components
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: milliseconds)
    }
}

/// The byte stream of one connection: buffered input split into lines, the
/// queued events, the next request id.
struct QMPSession {
    /// Events not yet returned by nextEvent, oldest first; beyond this many the oldest is dropped.
    static let maximumQueuedEvents = 256
    static let readSize = 65536

    var input: [UInt8] = []
    /// Where the unconsumed input starts (consumed lines are compacted away before the next read).
    var start = 0
    /// How far past `start` no line ending was found, so a long line is not rescanned per read.
    var scanned = 0
    var events: [QMPEvent] = []
    var nextID = 1
    /// Set once the stream cannot go on (EOF, a line too long): every later call throws it.
    var failure: QMPError?

    mutating func enqueue(_ event: QMPEvent) {
        // A watcher that stopped reading must not grow the queue without bound.
        if events.count >= Self.maximumQueuedEvents { events.removeFirst() }
        events.append(event)
    }

    mutating func dequeueEvent() -> QMPEvent? {
        events.isEmpty ? nil : events.removeFirst()
    }

    mutating func execute(_ socket: UnixStreamSocket, command: String, arguments: [String: QMPValue]?, timeout: Double) throws(QMPError) -> QMPValue {
        if let failure { throw failure }
        let id = nextID
        nextID += 1
        var request: QMPValue = ["execute": .string(command), "id": .number(Double(id))]
        if let arguments, case .object(var members) = request {
            members["arguments"] = .object(arguments)
            request = .object(members)
        }
        var bytes: [UInt8] = []
        try request.appendJSON(to: &bytes)
        bytes.append(UInt8(ascii: "\n"))
        try send(socket, bytes, step: command)
        let deadline = Deadline(seconds: timeout)
        while true {
            guard let message = try readMessage(socket, deadline: deadline, step: command) else {
                throw .timeout(step: command, seconds: timeout)
            }
            switch message {
            case .event(let event):
                enqueue(event)
            case .returnValue(let answered, let value):
                // Answers to other ids (an earlier command that timed out) are stale.
                if answered == .number(Double(id)) { return value }
            case .error(let answered, let errorClass, let description):
                // QEMU omits the id when it could not parse the request at all; requests are sequential, so that error is this one's.
                if answered == nil || answered == .number(Double(id)) {
                    throw .commandFailed(command: command, errorClass: errorClass, description: description)
                }
            case .greeting:
                throw .protocolViolation("a second greeting while waiting for \(command)")
            }
        }
    }

    mutating func nextEvent(_ socket: UnixStreamSocket, deadline: Deadline) throws(QMPError) -> QMPEvent? {
        while true {
            if let failure { throw failure }
            guard let message = try readMessage(socket, deadline: deadline, step: "waiting for an event") else { return nil }
            switch message {
            case .event(let event): return event
            // Answers to commands that timed out earlier; nobody waits for them now.
            case .returnValue, .error: continue
            case .greeting: throw .protocolViolation("a second greeting while waiting for an event")
            }
        }
    }

    /// The next message, or nil once `deadline` passed. Buffered lines are parsed before reading more.
    mutating func readMessage(_ socket: UnixStreamSocket, deadline: Deadline, step: String) throws(QMPError) -> QMPMessage? {
        while true {
            if let line = try nextLine() {
                // Blank lines carry nothing (QEMU ends lines with CRLF; some proxies add more).
                if line.allSatisfy({ $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: " ") }) { continue }
                return try QMPMessage.parse(line: line)
            }
            if let failure { throw failure }
            guard try waitReadable(socket, deadline: deadline, step: step) else { return nil }
            try fill(socket, step: step)
        }
    }

    /// A complete line from the buffer (without its LF), if there is one.
    mutating func nextLine() throws(QMPError) -> [UInt8]? {
        let searchFrom = start + scanned
        if let newline = input[searchFrom...].firstIndex(of: UInt8(ascii: "\n")) {
            let line = Array(input[start..<newline])
            start = newline + 1
            scanned = 0
            guard line.count <= QMPMessage.maximumLineLength + 1 else {  // +1: the CR of a CRLF
                throw fail(.protocolViolation("a line of more than \(QMPMessage.maximumLineLength) bytes"))
            }
            return line
        }
        scanned = input.count - start
        if scanned > QMPMessage.maximumLineLength + 1 {
            // The line's end is unknown, so the stream cannot be resynchronized.
            throw fail(.protocolViolation("a line of more than \(QMPMessage.maximumLineLength) bytes"))
        }
        return nil
    }

    /// Records a failure the stream cannot recover from, and drops the buffer.
    mutating func fail(_ error: QMPError) -> QMPError {
        failure = error
        input = []
        start = 0
        scanned = 0
        return error
    }

    /// Waits with poll(2) until the socket is readable (or hung up): false when the deadline passed first.
    func waitReadable(_ socket: UnixStreamSocket, deadline: Deadline, step: String) throws(QMPError) -> Bool {
        while true {
            var descriptor = pollfd(fd: socket.descriptor.rawValue, events: Int16(POLLIN), revents: 0)
            let milliseconds = deadline.pollMilliseconds
            do {
                // SAFETY: poll reads and writes the one pollfd only during the call.
                let ready = try systemCall("poll", retryOnInterrupt: false) { poll(&descriptor, 1, Int32(milliseconds)) }
                if ready > 0 { return true }
                if milliseconds == 0 { return false }
            } catch where error.errno == .interrupted {
                // Retried here rather than by systemCall, so the wait is recomputed from the deadline.
                continue
            } catch {
                throw .io(step: step, cause: error)
            }
        }
    }

    /// One read into the buffer; end of file becomes `.closed`.
    mutating func fill(_ socket: UnixStreamSocket, step: String) throws(QMPError) {
        if start > 0 {
            input.removeFirst(start)
            start = 0
        }
        var chunk = [UInt8](repeating: 0, count: Self.readSize)
        let count: Int
        do {
            // SAFETY: read writes at most chunk.count bytes into the array's storage during the call.
            count = try chunk.withUnsafeMutableBytes { raw in
                Result { () throws(SystemCallError) in try socket.descriptor.read(into: raw) }
            }.get()
        } catch {
            // ECONNRESET is QEMU going away as much as end of file is.
            if error.errno == Errno(rawValue: ECONNRESET) { throw fail(.closed(step: step)) }
            throw .io(step: step, cause: error)
        }
        guard count > 0 else { throw fail(.closed(step: step)) }
        input.append(contentsOf: chunk[..<count])
    }

    /// Sends all of `bytes` (MSG_NOSIGNAL: a QEMU gone is EPIPE, not SIGPIPE).
    func send(_ socket: UnixStreamSocket, _ bytes: [UInt8], step: String) throws(QMPError) {
        var offset = 0
        while offset < bytes.count {
            do {
                // SAFETY: send reads only the slice of the array's bytes, alive for the call.
                offset += try bytes.withUnsafeBytes { raw in
                    Result { () throws(SystemCallError) in
                        let rest = UnsafeRawBufferPointer(rebasing: raw[offset...])
                        return try systemCall("send") { Glibc.send(socket.descriptor.rawValue, rest.baseAddress, rest.count, Int32(MSG_NOSIGNAL)) }
                    }
                }.get()
            } catch where error.errno == Errno(rawValue: EPIPE) || error.errno == Errno(rawValue: ECONNRESET) {
                throw .closed(step: step)
            } catch {
                throw .io(step: step, cause: error)
            }
        }
    }
}
