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
    /// A VM of swiftletd's: `POST /v1/vms/{name}/agent` on the daemon's socket.
    case daemon(socketPath: String, vm: String)
}

/// One connection to a guest agent, past the handshake: it carries one
/// request (docs/agent.md). Reads and writes may run on two threads at
/// once; writes are serialized by a lock.
public final class AgentConnection: Sendable {
    public let transport: AgentTransport
    private let agentVersionStore = Mutex("")
    private let writeLock = Mutex(())
    private let decoder = Mutex(FrameDecoder())
    /// Where `receive` reads into: one buffer for the connection's life, not one per frame.
    private let readBuffer = Mutex([UInt8](repeating: 0, count: 64 * 1024))

    public var socket: UnixStreamSocket { transport.socket }
    public var agentVersion: String { agentVersionStore.withLock { $0 } }

    private init(transport: AgentTransport) {
        self.transport = transport
    }

    /// Connects and shakes hands, all within `timeout` seconds.
    public static func open(_ endpoint: AgentEndpoint, timeout: Double) throws(AgentClientError) -> AgentConnection {
        let transport: AgentTransport
        switch endpoint {
        case .vsockSocket(let path, let port):
            transport = AgentTransport(socket: try connectVsock(path: path, port: port, timeout: timeout), chunked: false)
        case .unixSocket(let path):
            let socket = try connectUnix(path, timeout: timeout)
            try setReceiveTimeout(socket, seconds: timeout)
            transport = AgentTransport(socket: socket, chunked: false)
        case .daemon(let socketPath, let vm):
            transport = try DaemonAgentRequest.open(socketPath: socketPath, vm: vm, timeout: timeout)
        }
        let connection = AgentConnection(transport: transport)
        try connection.send(.hello(version: AgentFrame.protocolVersion))
        let reply = try connection.receive(step: "the handshake", timeout: timeout)
        guard case .helloReply(_, let version) = reply else {
            if case .error(let code, let message) = reply { throw .agent(code: code, message: message) }
            throw .unexpected(reply.type, step: "the handshake")
        }
        connection.agentVersionStore.withLock { $0 = version }
        // After the handshake, reads wait as long as the request takes.
        try setReceiveTimeout(transport.socket, seconds: 0)
        return connection
    }

    /// A VMM's vsock socket, past `CONNECT port` and the VMM's `OK`: the
    /// guest's port at the other end. Used by the client and by swiftletd.
    public static func connectVsock(path: String, port: UInt32, timeout: Double) throws(AgentClientError) -> UnixStreamSocket {
        let socket = try connectUnix(path, timeout: timeout)
        try setReceiveTimeout(socket, seconds: timeout)
        try AgentTransport.writeAll(socket, Array("CONNECT \(port)\n".utf8), step: "sending CONNECT to the VMM")
        let line = try readLine(socket, limit: 64, timeout: timeout,
                                timedOut: .timedOut(step: "waiting for the VMM to connect vsock port \(port)", seconds: timeout),
                                closed: .noAgent(port: port))
        guard line.hasPrefix("OK ") else { throw .noAgent(port: port) }
        return socket
    }

    static func connectUnix(_ path: String, timeout: Double) throws(AgentClientError) -> UnixStreamSocket {
        do {
            return try UnixStreamSocket.connect(path: path, timeoutSeconds: max(1, Int(timeout.rounded(.up))))
        } catch {
            throw .noVsockSocket(path: path, cause: error)
        }
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
        let bytes = message.frame.encoded
        try writeLock.withLock { _ throws(AgentClientError) in
            try transport.write(bytes, step: "writing to the guest agent")
        }
    }

    /// Ends the sending side (the agent sees end of stream).
    public func closeWrite() {
        writeLock.withLock { _ in transport.closeWrite() }
    }

    /// The next message; `timeout` (seconds, 0 = none) bounds the wait.
    public func receive(step: String, timeout: Double = 0) throws(AgentClientError) -> AgentMessage {
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
            try readBuffer.withLock { buffer throws(AgentClientError) in
                let count = try transport.read(into: &buffer, step: step, timeout: timeout)
                guard count > 0 else { throw .closed(step: step) }
                // SAFETY: `count` bytes of the buffer were just filled.
                buffer.withUnsafeBufferPointer { bytes in
                    decoder.withLock { $0.append(UnsafeBufferPointer(rebasing: bytes[0..<count])) }
                }
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

    /// One line, a byte at a time (what follows it belongs to the next reader).
    static func readLine(_ socket: UnixStreamSocket, limit: Int, timeout: Double,
                         timedOut: AgentClientError, closed: AgentClientError) throws(AgentClientError) -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < limit {
            let count: Int
            do {
                count = try systemCall("read") { Glibc.read(socket.descriptor.rawValue, &byte, 1) }
            } catch {
                if error.errno == .wouldBlock { throw timedOut }
                if error.errno.rawValue == ECONNRESET { throw closed }
                throw .connection(step: "reading a line", cause: error)
            }
            guard count == 1 else { throw closed }
            if byte == UInt8(ascii: "\n") {
                if line.last == 13 { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            line.append(byte)
        }
        throw closed
    }
}

/// The client side of `POST /v1/vms/{name}/agent`: the request head with a
/// chunked body, then the response head; what follows is the agent's stream.
enum DaemonAgentRequest {
    static func open(socketPath: String, vm: String, timeout: Double) throws(AgentClientError) -> AgentTransport {
        let socket: UnixStreamSocket
        do {
            socket = try UnixStreamSocket.connect(path: socketPath, timeoutSeconds: max(1, Int(timeout.rounded(.up))))
        } catch {
            throw .daemonUnreachable(socket: socketPath, cause: error)
        }
        // The daemon answers once the VMM has connected the agent's port, so the read timeout covers its wait too.
        try AgentConnection.setReceiveTimeout(socket, seconds: timeout + 5)
        let name = vm.utf8.map { byte -> String in
            let safe = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) || "-._~".utf8.contains(byte)
            return safe ? String(UnicodeScalar(byte)) : "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
        }.joined()
        let seconds = max(1, min(60, Int(timeout.rounded(.up))))
        let head = "POST /v1/vms/\(name)/agent?timeout=\(seconds) HTTP/1.1\r\nHost: swiftletd\r\n" +
            "Content-Type: application/vnd.swiftlet.agent\r\nAccept: application/vnd.swiftlet.agent\r\nTransfer-Encoding: chunked\r\n\r\n"
        try AgentTransport.writeAll(socket, Array(head.utf8), step: "sending the agent request to swiftletd")
        let timedOut = AgentClientError.timedOut(step: "waiting for swiftletd to connect VM '\(vm)''s agent", seconds: timeout)
        let closed = AgentClientError.closed(step: "swiftletd's answer to the agent request")
        let status = try AgentConnection.readLine(socket, limit: 1024, timeout: timeout, timedOut: timedOut, closed: closed)
        let parts = status.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]) else {
            throw .daemon(status: 0, message: "not an HTTP response: \(status.prefix(80))")
        }
        var chunked = false
        var contentLength: Int?
        var headerCount = 0
        while true {
            let line = try AgentConnection.readLine(socket, limit: 8192, timeout: timeout, timedOut: timedOut, closed: closed)
            if line.isEmpty { break }
            headerCount += 1
            guard headerCount < 100 else { throw .daemon(status: code, message: "too many response headers") }
            let lower = line.lowercased()
            if lower.hasPrefix("transfer-encoding:") && lower.contains("chunked") { chunked = true }
            if lower.hasPrefix("content-length:") { contentLength = Int(lower.dropFirst("content-length:".count).filter { $0 != " " }) }
        }
        let transport = AgentTransport(socket: socket, chunked: chunked)
        guard code == 200 else {
            // The JSON error body: {"error": "..."}; read at most 64 KiB of it.
            var body: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while body.count < (contentLength ?? 65536), body.count < 65536 {
                guard let count = try? transport.read(into: &buffer, step: "the error body", timeout: timeout), count > 0 else { break }
                body += buffer[0..<count]
            }
            throw .daemon(status: code, message: errorMessage(body))
        }
        return transport
    }

    /// The `error` string of `{"error": "..."}`, else the body as text.
    static func errorMessage(_ body: [UInt8]) -> String {
        let text = String(decoding: body, as: UTF8.self)
        let key = Array("\"error\"".utf8)
        guard let start = (0...max(0, body.count - key.count)).first(where: { body.count >= key.count && Array(body[$0..<($0 + key.count)]) == key }) else {
            return text
        }
        var rest = Substring(String(decoding: body[(start + key.count)...], as: UTF8.self)).drop { $0 == " " || $0 == ":" }
        guard rest.first == "\"" else { return text }
        rest = rest.dropFirst()
        var message = ""
        var escaped = false
        for character in rest {
            if escaped {
                message.append(character == "n" ? "\n" : character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == "\"" {
                break
            } else {
                message.append(character)
            }
        }
        return message
    }
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
