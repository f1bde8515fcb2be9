import AgentProtocol
import HostSystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The byte stream under an agent connection: the socket itself (a VMM's
/// vsock socket after CONNECT, or the agent's own Unix socket), or the body
/// of swiftletd's `POST /v1/vms/{name}/agent`, chunked both ways.
public final class AgentTransport: Sendable {
    public let socket: UnixStreamSocket
    let chunked: Bool
    private let dechunker = Mutex(Dechunker())
    /// Raw bytes of a chunked body before decoding (reads run on one thread at a time).
    private let chunkedInput = Mutex([UInt8](repeating: 0, count: 65536))

    init(socket: UnixStreamSocket, chunked: Bool) {
        self.socket = socket
        self.chunked = chunked
    }

    /// Writes all of `bytes` (as one HTTP chunk through the daemon).
    func write(_ bytes: [UInt8], step: String) throws(AgentClientError) {
        guard chunked else { return try Self.writeAll(socket, bytes, step: step) }
        guard !bytes.isEmpty else { return }
        try Self.writeAll(socket, Array((String(bytes.count, radix: 16) + "\r\n").utf8) + bytes + [13, 10], step: step)
    }

    /// Ends the sending direction: SHUT_WR, or the last chunk.
    func closeWrite() {
        if chunked {
            try? Self.writeAll(socket, Array("0\r\n\r\n".utf8), step: "ending the request body")
        } else {
            _ = Glibc.shutdown(socket.descriptor.rawValue, Int32(SHUT_WR))
        }
    }

    /// Up to `buffer.count` bytes of the stream; 0 at its end.
    func read(into buffer: inout [UInt8], step: String, timeout: Double) throws(AgentClientError) -> Int {
        while true {
            if chunked {
                let decoded = try dechunker.withLock { state throws(AgentClientError) -> Int? in try state.take(into: &buffer) }
                if let decoded { return decoded }
            }
            guard chunked else { return try readSocket(into: &buffer, step: step, timeout: timeout) }
            let ended = try chunkedInput.withLock { raw throws(AgentClientError) -> Bool in
                let count = try readSocket(into: &raw, step: step, timeout: timeout)
                if count > 0 { dechunker.withLock { $0.pending.append(contentsOf: raw[0..<count]) } }
                return count == 0
            }
            if ended {
                guard dechunker.withLock({ $0.ended }) else { throw .closed(step: step) }
                return 0
            }
        }
    }

    /// One read(2) from the socket; 0 at end of stream (or a reset).
    private func readSocket(into buffer: inout [UInt8], step: String, timeout: Double) throws(AgentClientError) -> Int {
        do {
            return try systemCall("read") {
                // SAFETY: read(2) writes at most the buffer's length.
                buffer.withUnsafeMutableBytes { Glibc.read(socket.descriptor.rawValue, $0.baseAddress, $0.count) }
            }
        } catch {
            if error.errno == .wouldBlock { throw .timedOut(step: step, seconds: timeout) }
            if error.errno.rawValue == ECONNRESET { return 0 }
            throw .connection(step: "reading from the guest agent during \(step)", cause: error)
        }
    }

    /// Decodes `Transfer-Encoding: chunked`, holding at most one chunk's
    /// header and the bytes read but not yet returned.
    struct Dechunker {
        var pending: [UInt8] = []
        /// Bytes left in the current chunk's data (then its CRLF).
        var remaining = 0
        var needsCRLF = false
        var ended = false

        /// Decoded bytes into `buffer`; nil when more input is needed; 0 at the last chunk.
        mutating func take(into buffer: inout [UInt8]) throws(AgentClientError) -> Int? {
            while true {
                if ended { return 0 }
                if remaining > 0 {
                    guard !pending.isEmpty else { return nil }
                    let count = min(remaining, pending.count, buffer.count)
                    buffer.replaceSubrange(0..<count, with: pending[0..<count])
                    pending.removeFirst(count)
                    remaining -= count
                    if remaining == 0 { needsCRLF = true }
                    return count
                }
                if needsCRLF {
                    guard pending.count >= 2 else { return nil }
                    pending.removeFirst(2)
                    needsCRLF = false
                }
                guard let newline = pending.firstIndex(of: 10) else {
                    if pending.count > 1024 { throw .daemon(status: 200, message: "malformed chunked body (a chunk header over 1 KiB)") }
                    return nil
                }
                let header = String(decoding: pending[0..<newline], as: UTF8.self)
                    .split(separator: ";").first.map { String($0).trimmingCharacters(in: " \r") } ?? ""
                pending.removeFirst(newline + 1)
                guard let size = Int(header, radix: 16), size >= 0 else {
                    throw .daemon(status: 200, message: "malformed chunk size '\(header)' in the response body")
                }
                if size == 0 {
                    ended = true
                    return 0
                }
                remaining = size
            }
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
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var text = Substring(self)
        while let first = text.first, set.contains(first) { text = text.dropFirst() }
        while let last = text.last, set.contains(last) { text = text.dropLast() }
        return String(text)
    }
}
