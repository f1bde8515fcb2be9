import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small blocking HTTP/1.1 client over a Unix socket: one connection per
/// request (`Connection: close`), `Content-Length` and chunked bodies. Used
/// by the CLI to talk to swiftletd and by swiftletd to talk to a VMM's
/// control API; both are local, small and short.
public struct UnixHTTPClient: Sendable {
    public let socketPath: String
    /// Receive/send timeout in seconds (0: none, for event streams).
    public var timeout: Double

    public init(socketPath: String, timeout: Double = 30) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: Data
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    public enum Failure: Error, CustomStringConvertible {
        case connect(path: String, errno: Int32)
        case io(step: String, errno: Int32)
        case malformedResponse(String)

        public var description: String {
            switch self {
            case .connect(let path, let code):
                return "cannot connect to \(path): \(String(cString: strerror(code)))"
            case .io(let step, let code):
                return "\(step): \(String(cString: strerror(code)))"
            case .malformedResponse(let what): return "malformed HTTP response: \(what)"
            }
        }

        /// The socket is absent or nobody listens on it.
        public var isNotListening: Bool {
            if case .connect(_, let code) = self { return code == ENOENT || code == ECONNREFUSED }
            return false
        }
    }

    public func request(_ method: String, _ path: String, body: Data? = nil, contentType: String = "application/json") throws -> Response {
        let connection = try Connection(path: socketPath, timeout: timeout)
        defer { connection.close() }
        try connection.send(requestHead(method, path, body: body, contentType: contentType) + (body ?? Data()))
        var reader = ResponseReader(connection: connection)
        let (status, headers) = try reader.readHead()
        var body = Data()
        try reader.readBody(headers: headers, method: method) { body.append($0); return true }
        return Response(status: status, headers: headers, body: body)
    }

    /// Sends a GET and hands each line of the (chunked or streamed) body to
    /// `onLine` until it returns false or the server ends the stream.
    public func streamLines(_ path: String, onHead: (Int, [String: String]) throws -> Void = { _, _ in },
                            onLine: (String) -> Bool) throws {
        let connection = try Connection(path: socketPath, timeout: timeout)
        defer { connection.close() }
        try connection.send(requestHead("GET", path, body: nil, contentType: "application/json"))
        var reader = ResponseReader(connection: connection)
        let (status, headers) = try reader.readHead()
        try onHead(status, headers)
        var pending = Data()
        try reader.readBody(headers: headers, method: "GET") { chunk in
            pending.append(chunk)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...newline)
                if !onLine(line) { return false }
            }
            return true
        }
    }

    func requestHead(_ method: String, _ path: String, body: Data?, contentType: String) -> Data {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n"
        if let body {
            head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        } else if method != "GET" && method != "DELETE" && method != "HEAD" {
            head += "Content-Length: 0\r\n"
        }
        return Data((head + "\r\n").utf8)
    }
}

/// One connected Unix stream socket.
final class Connection: @unchecked Sendable {
    let descriptor: Int32

    init(path: String, timeout: Double) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw UnixHTTPClient.Failure.io(step: "socket", errno: errno) }
        descriptor = fd
        if timeout > 0 {
            var value = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1_000_000))
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else {
            Glibc.close(fd)
            throw UnixHTTPClient.Failure.connect(path: path, errno: ENAMETOOLONG)
        }
        // SAFETY: sun_path is a fixed-size C array of `capacity` bytes; at most capacity-1 are written.
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) { pointer in
            // SAFETY: sockaddr_un is layout-compatible with sockaddr for connect(2).
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if result != 0 {
            let code = errno
            Glibc.close(fd)
            throw UnixHTTPClient.Failure.connect(path: path, errno: code)
        }
    }

    func send(_ data: Data) throws {
        var offset = 0
        while offset < data.count {
            let written = data.withUnsafeBytes { raw in
                // SAFETY: offset < count, so the base address plus offset stays in the buffer.
                Glibc.send(descriptor, raw.baseAddress!.advanced(by: offset), data.count - offset, Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw UnixHTTPClient.Failure.io(step: "sending the request", errno: errno)
            }
            offset += written
        }
    }

    /// Up to 64 KiB; empty at end of stream.
    func receive() throws -> Data {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(descriptor, &buffer, buffer.count, 0)
            if count < 0 {
                if errno == EINTR { continue }
                throw UnixHTTPClient.Failure.io(step: "reading the response", errno: errno)
            }
            return Data(buffer[0..<count])
        }
    }

    func close() { Glibc.close(descriptor) }
}

struct ResponseReader {
    let connection: Connection
    var buffer = Data()
    var ended = false

    init(connection: Connection) { self.connection = connection }

    mutating func fill() throws -> Bool {
        if ended { return false }
        let data = try connection.receive()
        if data.isEmpty { ended = true; return false }
        buffer.append(data)
        return true
    }

    mutating func readHead() throws -> (Int, [String: String]) {
        let separator = Data("\r\n\r\n".utf8)
        while true {
            if let range = buffer.range(of: separator) {
                let head = String(decoding: buffer[buffer.startIndex..<range.lowerBound], as: UTF8.self)
                buffer.removeSubrange(buffer.startIndex..<range.upperBound)
                var lines = head.components(separatedBy: "\r\n")
                let statusLine = lines.removeFirst().split(separator: " ")
                guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
                    throw UnixHTTPClient.Failure.malformedResponse("status line")
                }
                var headers: [String: String] = [:]
                for line in lines {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                return (status, headers)
            }
            guard buffer.count < 1 << 20 else { throw UnixHTTPClient.Failure.malformedResponse("header too long") }
            guard try fill() else { throw UnixHTTPClient.Failure.malformedResponse("connection closed before the header ended") }
        }
    }

    /// Delivers the body in pieces; `deliver` returns false to stop early.
    mutating func readBody(headers: [String: String], method: String, deliver: (Data) -> Bool) throws {
        if method == "HEAD" { return }
        if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            while true {
                let lineEnd = Data("\r\n".utf8)
                var sizeRange = buffer.range(of: lineEnd)
                while sizeRange == nil {
                    guard try fill() else { throw UnixHTTPClient.Failure.malformedResponse("chunked body ended early") }
                    sizeRange = buffer.range(of: lineEnd)
                }
                let sizeText = String(decoding: buffer[buffer.startIndex..<sizeRange!.lowerBound], as: UTF8.self)
                guard let size = Int(sizeText.split(separator: ";").first ?? "", radix: 16) else {
                    throw UnixHTTPClient.Failure.malformedResponse("chunk size '\(sizeText)'")
                }
                buffer.removeSubrange(buffer.startIndex..<sizeRange!.upperBound)
                if size == 0 { return }
                while buffer.count < size + 2 {
                    guard try fill() else { throw UnixHTTPClient.Failure.malformedResponse("chunk ended early") }
                }
                let chunk = Data(buffer.prefix(size))
                buffer.removeFirst(size + 2)
                if !deliver(chunk) { return }
            }
        } else if let lengthText = headers["content-length"], let length = Int(lengthText) {
            while buffer.count < length {
                guard try fill() else { throw UnixHTTPClient.Failure.malformedResponse("body shorter than Content-Length") }
            }
            _ = deliver(Data(buffer.prefix(length)))
        } else {
            if !buffer.isEmpty { if !deliver(buffer) { return } }
            buffer.removeAll()
            while try fill() {
                let piece = buffer
                buffer.removeAll()
                if !deliver(piece) { return }
            }
        }
    }
}
