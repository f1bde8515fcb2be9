import AgentProtocol
import HostSystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where an agent is reached.
public enum AgentEndpoint: Sendable, Equatable {
    /// A VMM's hybrid vsock Unix socket (docs/vsock.md): `CONNECT <port>`.
    case vsockSocket(path: String, port: UInt32 = AgentFrame.defaultPort)
    /// An agent listening on a Unix socket itself (`swiftlet-agent --listen unix:PATH`).
    case unixSocket(path: String)
}

/// One connection to a guest agent, past the handshake: it carries one
/// request (docs/agent.md). Reads and writes may run on two threads at
/// once; writes are serialized by a lock.
public final class AgentConnection: Sendable {
    public let socket: UnixStreamSocket
    public let agentVersion: String
    private let writeLock = Mutex(())
    private let decoder = Mutex(FrameDecoder())

    private init(socket: UnixStreamSocket, agentVersion: String) {
        self.socket = socket
        self.agentVersion = agentVersion
    }

    /// Connects and shakes hands, all within `timeout` seconds.
    public static func open(_ endpoint: AgentEndpoint, timeout: Double) throws(AgentClientError) -> AgentConnection {
        let path: String
        switch endpoint {
        case .vsockSocket(let socketPath, _), .unixSocket(let socketPath): path = socketPath
        }
        let socket: UnixStreamSocket
        do {
            socket = try UnixStreamSocket.connect(path: path, timeoutSeconds: max(1, Int(timeout.rounded(.up))))
        } catch {
            throw .noVsockSocket(path: path, cause: error)
        }
        try setReceiveTimeout(socket, seconds: timeout)
        if case .vsockSocket(_, let port) = endpoint {
            try writeAll(socket, Array("CONNECT \(port)\n".utf8), step: "sending CONNECT to the VMM")
            let line = try readLine(socket, limit: 64, timeout: timeout, port: port)
            guard line.hasPrefix("OK ") else { throw .noAgent(port: port) }
        }
        let provisional = AgentConnection(socket: socket, agentVersion: "")
        try provisional.send(.hello(version: AgentFrame.protocolVersion))
        let reply = try provisional.receive(step: "the handshake", timeout: timeout)
        guard case .helloReply(_, let version) = reply else {
            if case .error(let code, let message) = reply { throw .agent(code: code, message: message) }
            throw .unexpected(reply.type, step: "the handshake")
        }
        let connection = AgentConnection(socket: socket, agentVersion: version)
        connection.decoder.withLock { $0 = provisional.decoder.withLock { $0 } }
        // After the handshake, reads wait as long as the request takes.
        try setReceiveTimeout(socket, seconds: 0)
        return connection
    }

    /// Retries `open` while the guest boots (no socket yet, no agent yet)
    /// until `timeout`; `stillStarting` returning false stops early (the VMM died).
    public static func waitForAgent(_ endpoint: AgentEndpoint, timeout: Double,
                                    stillStarting: () -> Bool = { true }) throws(AgentClientError) -> AgentConnection {
        let deadline = monotonicSeconds() + timeout
        while true {
            do {
                return try open(endpoint, timeout: max(1, min(10, deadline - monotonicSeconds())))
            } catch {
                // A VMM whose guest has no vsock driver yet holds CONNECT unanswered: a timeout here is "not yet" too.
                var retryable = error.isNotReady
                if case .timedOut = error { retryable = true }
                guard retryable, stillStarting(), monotonicSeconds() < deadline else {
                    if retryable && monotonicSeconds() >= deadline {
                        throw .timedOut(step: "waiting for the agent to listen on vsock port \(AgentFrame.defaultPort)", seconds: timeout)
                    }
                    throw error
                }
                usleep(20_000)
            }
        }
    }

    public func send(_ message: AgentMessage) throws(AgentClientError) {
        try sendRaw(message.frame.encoded)
    }

    func sendRaw(_ bytes: [UInt8]) throws(AgentClientError) {
        try writeLock.withLock { _ throws(AgentClientError) in
            try Self.writeAll(socket, bytes, step: "writing to the guest agent")
        }
    }

    /// Shuts down the sending side (the agent sees end of stream).
    public func closeWrite() {
        _ = Glibc.shutdown(socket.descriptor.rawValue, Int32(SHUT_WR))
    }

    /// The next message; `timeout` (seconds, 0 = none) bounds the wait.
    public func receive(step: String, timeout: Double = 0) throws(AgentClientError) -> AgentMessage {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let next: AgentFrame?
            do {
                next = try decoder.withLock { decoder throws(AgentProtocolError) in try decoder.next() }
            } catch {
                throw .malformed(error)
            }
            if let next {
                do {
                    return try AgentMessage(frame: next)
                } catch {
                    throw .malformed(error)
                }
            }
            let count: Int
            do {
                count = try systemCall("read") {
                    // SAFETY: read(2) writes at most the buffer's length.
                    buffer.withUnsafeMutableBytes { Glibc.read(socket.descriptor.rawValue, $0.baseAddress, $0.count) }
                }
            } catch {
                if error.errno == .wouldBlock { throw .timedOut(step: step, seconds: timeout) }
                throw .connection(step: "reading from the guest agent during \(step)", cause: error)
            }
            guard count > 0 else { throw .closed(step: step) }
            // SAFETY: read(2) wrote `count` bytes into the buffer.
            buffer.withUnsafeBufferPointer { bytes in
                decoder.withLock { $0.append(UnsafeBufferPointer(rebasing: bytes[0..<count])) }
            }
        }
    }

    // MARK: helpers

    static func setReceiveTimeout(_ socket: UnixStreamSocket, seconds: Double) throws(AgentClientError) {
        var value = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1_000_000))
        do {
            _ = try systemCall("setsockopt SO_RCVTIMEO") {
                // SAFETY: setsockopt reads one timeval, passed with its own size.
                setsockopt(socket.descriptor.rawValue, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
            }
        } catch {
            throw .connection(step: "setting the receive timeout", cause: error)
        }
    }

    static func writeAll(_ socket: UnixStreamSocket, _ bytes: [UInt8], step: String) throws(AgentClientError) {
        var offset = 0
        while offset < bytes.count {
            let start = offset
            let written: Int
            do {
                written = try systemCall(step) {
                    // SAFETY: `start` is inside the array, alive for the call.
                    bytes.withUnsafeBytes { Glibc.send(socket.descriptor.rawValue, $0.baseAddress! + start, $0.count - start, Int32(MSG_NOSIGNAL)) }
                }
            } catch {
                if error.errno.rawValue == EPIPE || error.errno.rawValue == ECONNRESET { throw .closed(step: step) }
                throw .connection(step: step, cause: error)
            }
            offset += written
        }
    }

    /// The VMM's answer to CONNECT, one byte at a time (the agent's bytes follow it).
    static func readLine(_ socket: UnixStreamSocket, limit: Int, timeout: Double, port: UInt32) throws(AgentClientError) -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < limit {
            let count: Int
            do {
                count = try systemCall("read") { Glibc.read(socket.descriptor.rawValue, &byte, 1) }
            } catch {
                if error.errno == .wouldBlock { throw .timedOut(step: "waiting for the VMM to connect vsock port \(port)", seconds: timeout) }
                if error.errno.rawValue == ECONNRESET { throw .noAgent(port: port) }
                throw .connection(step: "reading the VMM's answer to CONNECT", cause: error)
            }
            guard count == 1 else { throw .noAgent(port: port) }
            if byte == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
        throw .noAgent(port: port)
    }
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
