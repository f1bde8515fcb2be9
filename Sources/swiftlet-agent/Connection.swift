#if canImport(AgentProtocol)
import AgentProtocol
#endif
import CAgentSys

/// One client connection: frames in and out over a socket. Reads block
/// until a whole frame is there; the exec session switches the socket to
/// non-blocking and drives it from its poll loop instead.
final class Connection {
    let fd: Int32
    var decoder = FrameDecoder()
    private var readBuffer = [UInt8](repeating: 0, count: 64 * 1024)

    init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    /// The next frame, blocking; `AgentError.closed` at end of stream.
    func receive() throws(AgentError) -> AgentFrame {
        while true {
            do {
                if let frame = try decoder.next() { return frame }
            } catch {
                throw .protocolViolation(error)
            }
            // A blocking socket: this waits for bytes, and false is end of stream.
            guard try fillAvailable() else { throw .closed }
        }
    }

    func receiveMessage() throws(AgentError) -> AgentMessage {
        let frame = try receive()
        do {
            return try AgentMessage(frame: frame)
        } catch {
            throw .protocolViolation(error)
        }
    }

    func send(_ message: AgentMessage) throws(AgentError) {
        try sendAll(message.frame.encoded)
    }

    /// Writes every byte, blocking (poll) while the socket is full.
    func sendAll(_ bytes: [UInt8]) throws(AgentError) {
        var offset = 0
        let descriptor = fd
        while offset < bytes.count {
            let start = offset
            let written = bytes.withUnsafeBufferPointer { buffer -> Int in
                // SAFETY: `start` is within the buffer, which outlives the call.
                sendBytes(descriptor, buffer.baseAddress! + start, buffer.count - start)
            }
            if written >= 0 {
                offset += written
                continue
            }
            let code = agent_errno()
            if code == EINTR { continue }
            if code == EAGAIN {
                var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&entry, 1, 1000)
                continue
            }
            throw .system(step: "write to the client", errno: code)
        }
    }

    /// Reads what the socket has into the decoder (waiting for it on a
    /// blocking socket); false at end of stream.
    func fillAvailable() throws(AgentError) -> Bool {
        let descriptor = fd
        while true {
            // SAFETY: the buffer is owned by this connection and outlives the call.
            let count = readBuffer.withUnsafeMutableBufferPointer { read(descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                // SAFETY: `count` bytes of the buffer were just written by read(2).
                readBuffer.withUnsafeBufferPointer { decoder.append(UnsafeBufferPointer(rebasing: $0[0..<count])) }
                return true
            }
            if count == 0 { return false }
            let code = agent_errno()
            if code == EINTR { continue }
            if code == EAGAIN { return true }
            throw .system(step: "read from the client", errno: code)
        }
    }

    /// Sends an `error` frame, ignoring failure (the connection closes next).
    func sendError(_ error: AgentError) {
        try? send(.error(code: error.code, message: error.message))
    }
}

/// send(2) without SIGPIPE, under a name no method shadows.
func sendBytes(_ fd: Int32, _ bytes: UnsafePointer<UInt8>, _ count: Int) -> Int {
    send(fd, bytes, count, Int32(MSG_NOSIGNAL))
}
