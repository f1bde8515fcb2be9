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
    /// A response body (or one streamed line) larger than this is refused
    /// as malformed rather than buffered.
    public var maximumBodySize: Int

    public init(socketPath: String, timeout: Double = 30, maximumBodySize: Int = 32 << 20) {
        self.socketPath = socketPath
        self.timeout = timeout
        self.maximumBodySize = maximumBodySize
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
        var reader = ResponseReader(source: connection, maximumBodySize: maximumBodySize)
        let (status, headers) = try reader.readHead()
        var body = Data()
        try reader.readBody(headers: headers, method: method) { body.append(contentsOf: $0); return true }
        return Response(status: status, headers: headers, body: body)
    }

    /// Sends a GET and hands each line of the (chunked or streamed) body to
    /// `onLine` until it returns false or the server ends the stream.
    public func streamLines(_ path: String, onHead: (Int, [String: String]) throws -> Void = { _, _ in },
                            onLine: (String) -> Bool) throws {
        let connection = try Connection(path: socketPath, timeout: timeout)
        defer { connection.close() }
        try connection.send(requestHead("GET", path, body: nil, contentType: "application/json"))
        // A stream has no total size; each line is bounded instead.
        var reader = ResponseReader(source: connection, maximumBodySize: maximumBodySize, capsEachPiece: true)
        let (status, headers) = try reader.readHead()
        try onHead(status, headers)
        var pending = Data()
        var tooLong = false
        try reader.readBody(headers: headers, method: "GET") { chunk in
            pending.append(contentsOf: chunk)
            if pending.count > maximumBodySize, pending.firstIndex(of: UInt8(ascii: "\n")) == nil { tooLong = true; return false }
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...newline)
                if !onLine(line) { return false }
            }
            return true
        }
        if tooLong { throw Failure.malformedResponse("a streamed line is longer than \(maximumBodySize) bytes") }
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
    func receive() throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(descriptor, &buffer, buffer.count, 0)
            if count < 0 {
                if errno == EINTR { continue }
                throw UnixHTTPClient.Failure.io(step: "reading the response", errno: errno)
            }
            return Array(buffer[0..<count])
        }
    }

    func close() { Glibc.close(descriptor) }
}

/// Where a `ResponseReader` gets bytes: a socket, or (in tests and the
/// fuzz target) bytes in memory. An empty answer is the end of the stream.
public protocol HTTPByteSource {
    mutating func receive() throws -> [UInt8]
}

extension Connection: HTTPByteSource {}

/// Bytes in memory handed out in the given pieces (tests, Fuzz/FuzzHTTPResponse).
public struct HTTPPiecesSource: HTTPByteSource {
    var pieces: [[UInt8]]
    var next = 0
    public init(pieces: [[UInt8]]) { self.pieces = pieces }
    public mutating func receive() throws -> [UInt8] {
        while next < pieces.count {
            let piece = pieces[next]
            next += 1
            if !piece.isEmpty { return piece }
        }
        return []
    }
}

/// A total HTTP/1.1 response parser: a peer (a VMM's control socket, or
/// whatever listens at a path) controls every byte, so no input traps or
/// makes it allocate without bound. The head is capped at `maximumHeadSize`
/// and the body at `limits.maximumBodySize`; a Content-Length or chunk size
/// that is not plain digits, negative, or over the cap is `malformedResponse`.
public struct ResponseReader<Source: HTTPByteSource> {
    public static var maximumHeadSize: Int { 64 * 1024 }
    var source: Source
    /// Unconsumed bytes are `buffer[offset...]`; consumed ones are dropped in bulk.
    var buffer: [UInt8] = []
    var offset = 0
    var ended = false
    let maximumBodySize: Int
    /// Streams (event feeds) have no total size: the cap then bounds each
    /// chunk rather than the sum.
    let capsEachPiece: Bool

    public init(source: Source, maximumBodySize: Int, capsEachPiece: Bool = false) {
        self.source = source
        self.maximumBodySize = max(0, maximumBodySize)
        self.capsEachPiece = capsEachPiece
    }

    var available: Int { buffer.count - offset }

    mutating func fill() throws -> Bool {
        if ended { return false }
        let data = try source.receive()
        if data.isEmpty { ended = true; return false }
        if offset > 0 {
            buffer.removeFirst(offset)
            offset = 0
        }
        buffer.append(contentsOf: data)
        return true
    }

    mutating func take(_ count: Int) -> [UInt8] {
        let piece = Array(buffer[offset..<offset + count])
        offset += count
        return piece
    }

    /// The index of the next CRLF at or after `offset`, if buffered.
    func lineEnd(from start: Int) -> Int? {
        var index = start
        while index + 1 < buffer.count {
            if buffer[index] == 13 && buffer[index + 1] == 10 { return index }
            index += 1
        }
        return nil
    }

    static func malformed(_ what: String) -> UnixHTTPClient.Failure { .malformedResponse(what) }

    /// A non-negative decimal or hexadecimal number of at most `digits`
    /// digits and no sign; nil otherwise.
    static func parseSize(_ text: Substring, radix: Int, digits: Int) -> Int? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty, trimmed.count <= digits,
              trimmed.unicodeScalars.allSatisfy({ radix == 16 ? $0.properties.isASCIIHexDigit : ("0"..."9").contains($0) }) else { return nil }
        return Int(trimmed, radix: radix)
    }

    public mutating func readHead() throws -> (Int, [String: String]) {
        var searchFrom = offset
        while true {
            // The head ends at the first empty line (CRLF CRLF).
            var end: Int?
            var index = searchFrom
            while index + 3 < buffer.count {
                if buffer[index] == 13 && buffer[index + 1] == 10 && buffer[index + 2] == 13 && buffer[index + 3] == 10 { end = index; break }
                index += 1
            }
            if let end {
                guard end - offset <= Self.maximumHeadSize else { throw Self.malformed("header longer than \(Self.maximumHeadSize) bytes") }
                let head = String(decoding: buffer[offset..<end], as: UTF8.self)
                offset = end + 4
                var lines = head.components(separatedBy: "\r\n")
                let statusLine = lines.removeFirst().split(separator: " ", maxSplits: 2)
                guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/"),
                      let status = Self.parseSize(statusLine[1], radix: 10, digits: 3), (100...999).contains(status) else {
                    throw Self.malformed("status line")
                }
                var headers: [String: String] = [:]
                for line in lines {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                return (status, headers)
            }
            guard available <= Self.maximumHeadSize else { throw Self.malformed("header longer than \(Self.maximumHeadSize) bytes") }
            searchFrom = max(offset, buffer.count - 3)
            let before = offset
            guard try fill() else { throw Self.malformed("connection closed before the header ended") }
            // fill() may have dropped consumed bytes: keep the search position relative.
            searchFrom = max(0, searchFrom - before)
        }
    }

    /// Delivers the body in pieces; `deliver` returns false to stop early.
    /// Everything delivered adds up to at most `maximumBodySize` bytes.
    public mutating func readBody(headers: [String: String], method: String, deliver: ([UInt8]) -> Bool) throws {
        if method == "HEAD" { return }
        var total = 0
        func account(_ count: Int) throws {
            guard count <= maximumBodySize - total else { throw Self.malformed("body larger than \(maximumBodySize) bytes") }
            if !capsEachPiece { total += count }
        }
        if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            while true {
                var sizeEnd = lineEnd(from: offset)
                while sizeEnd == nil {
                    guard available <= 1024 else { throw Self.malformed("chunk size line longer than 1024 bytes") }
                    guard try fill() else { throw Self.malformed("chunked body ended early") }
                    sizeEnd = lineEnd(from: offset)
                }
                guard let sizeEnd else { throw Self.malformed("chunked body ended early") }
                let sizeText = String(decoding: buffer[offset..<sizeEnd], as: UTF8.self)
                guard let size = Self.parseSize(sizeText.split(separator: ";", omittingEmptySubsequences: false).first ?? "", radix: 16, digits: 15) else {
                    throw Self.malformed("chunk size '\(sizeText.prefix(40))'")
                }
                offset = sizeEnd + 2
                if size == 0 { return }
                try account(size)
                while available < size + 2 {
                    guard try fill() else { throw Self.malformed("chunk ended early") }
                }
                let chunk = take(size)
                guard buffer[offset] == 13 && buffer[offset + 1] == 10 else { throw Self.malformed("no CRLF after a chunk") }
                offset += 2
                if !deliver(chunk) { return }
            }
        } else if let lengthText = headers["content-length"] {
            guard let length = Self.parseSize(Substring(lengthText), radix: 10, digits: 18) else {
                throw Self.malformed("Content-Length '\(lengthText.prefix(40))'")
            }
            try account(length)
            while available < length {
                guard try fill() else { throw Self.malformed("body shorter than Content-Length") }
            }
            _ = deliver(take(length))
        } else {
            if available > 0 {
                try account(available)
                if !deliver(take(available)) { return }
            }
            while try fill() {
                try account(available)
                if !deliver(take(available)) { return }
            }
        }
    }
}

extension UnixHTTPClient {
    /// Parses a whole response from bytes in memory, as `request` does from a socket.
    public static func parseResponse(_ pieces: [[UInt8]], method: String = "GET", maximumBodySize: Int) throws -> Response {
        var reader = ResponseReader(source: HTTPPiecesSource(pieces: pieces), maximumBodySize: maximumBodySize)
        let (status, headers) = try reader.readHead()
        var body = Data()
        try reader.readBody(headers: headers, method: method) { body.append(contentsOf: $0); return true }
        return Response(status: status, headers: headers, body: body)
    }
}
