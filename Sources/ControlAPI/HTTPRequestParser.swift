/// Why bytes are not an acceptable HTTP request: the status to answer with
/// and a message naming the problem. The connection closes after it.
public struct HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public let status: Int
    public let message: String

    public init(status: Int, message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "\(status): \(message)" }
}

/// Parses HTTP/1.x requests from the bytes a connection has buffered. It
/// keeps no state between calls: the caller passes everything received for
/// the current request and, once one is complete, drops `consumed` bytes.
/// Header sections and bodies are bounded (431 and 413); bodies need a
/// Content-Length (chunked transfer coding is refused with 411).
public struct HTTPRequestParser: Sendable {
    public struct Limits: Sendable {
        /// Request line plus header fields, terminating blank line included.
        public var maximumHeaderBytes: Int
        public var maximumBodyBytes: Int
        public var maximumHeaderCount: Int

        public init(maximumHeaderBytes: Int = 8192, maximumBodyBytes: Int = 64 << 10, maximumHeaderCount: Int = 64) {
            self.maximumHeaderBytes = maximumHeaderBytes
            self.maximumBodyBytes = maximumBodyBytes
            self.maximumHeaderCount = maximumHeaderCount
        }
    }

    public enum Outcome: Equatable, Sendable {
        /// The header section is not complete yet.
        case needHeaders
        /// Headers are complete; `bodyLength` bytes of body are awaited and
        /// the client asked for `100 Continue` first if `expectsContinue`.
        case needBody(bodyLength: Int, expectsContinue: Bool)
        /// A whole request, which took the first `consumed` bytes.
        case request(HTTPRequest, consumed: Int)
    }

    public var limits: Limits

    public init(limits: Limits = Limits()) { self.limits = limits }

    public func parse(_ bytes: ArraySlice<UInt8>) throws(HTTPParseError) -> Outcome {
        // Tolerate blank lines before a request (RFC 9112 section 2.2).
        var start = bytes.startIndex
        while start < bytes.endIndex, bytes[start] == 0x0D || bytes[start] == 0x0A { start += 1 }
        let buffer = bytes[start...]
        let leading = start - bytes.startIndex

        guard let headerEnd = Self.endOfHeaders(buffer) else {
            if buffer.count > limits.maximumHeaderBytes {
                throw HTTPParseError(status: 431, message: "the request line and headers exceed \(limits.maximumHeaderBytes) bytes")
            }
            return .needHeaders
        }
        let headerLength = headerEnd.bodyStart - buffer.startIndex
        guard headerLength <= limits.maximumHeaderBytes else {
            throw HTTPParseError(status: 431, message: "the request line and headers exceed \(limits.maximumHeaderBytes) bytes")
        }
        var lines = Self.lines(buffer[buffer.startIndex..<headerEnd.headersEnd])
        guard !lines.isEmpty else { throw HTTPParseError(status: 400, message: "empty request") }
        let requestLine = lines.removeFirst()
        var request = try parseRequestLine(requestLine)

        guard lines.count <= limits.maximumHeaderCount else {
            throw HTTPParseError(status: 431, message: "more than \(limits.maximumHeaderCount) header fields")
        }
        var contentLength: Int?
        var connectionTokens: [String] = []
        var expectsContinue = false
        for line in lines {
            let field = try parseHeaderField(line)
            request.headers.append(field)
            switch field.name {
            case "content-length":
                let length = try parseContentLength(field.value)
                if let previous = contentLength, previous != length {
                    throw HTTPParseError(status: 400, message: "conflicting Content-Length headers")
                }
                contentLength = length
            case "transfer-encoding":
                throw HTTPParseError(status: 411, message: "Transfer-Encoding '\(field.value)' is not supported; send the body with a Content-Length")
            case "connection":
                connectionTokens += field.value.split(separator: ",").map { $0.trimmingSpaces.lowercased() }
            case "expect":
                guard field.value.lowercased() == "100-continue" else {
                    throw HTTPParseError(status: 417, message: "unsupported Expect '\(field.value)'")
                }
                expectsContinue = true
            default:
                break
            }
        }
        request.keepAlive = request.minorVersion == 1
            ? !connectionTokens.contains("close")
            : connectionTokens.contains("keep-alive")

        let bodyLength = contentLength ?? 0
        guard bodyLength <= limits.maximumBodyBytes else {
            throw HTTPParseError(status: 413, message: "the body of \(bodyLength) bytes exceeds the limit of \(limits.maximumBodyBytes) bytes")
        }
        let available = buffer.endIndex - headerEnd.bodyStart
        guard available >= bodyLength else {
            return .needBody(bodyLength: bodyLength, expectsContinue: expectsContinue)
        }
        request.body = Array(buffer[headerEnd.bodyStart..<(headerEnd.bodyStart + bodyLength)])
        return .request(request, consumed: leading + headerLength + bodyLength)
    }

    /// Where the header section ends (before its blank line) and the body
    /// starts. Accepts CRLF and, leniently, bare LF line ends.
    static func endOfHeaders(_ buffer: ArraySlice<UInt8>) -> (headersEnd: Int, bodyStart: Int)? {
        var index = buffer.startIndex
        while index < buffer.endIndex {
            if buffer[index] == 0x0A {
                // LF LF, or LF CR LF.
                let next = index + 1
                if next < buffer.endIndex, buffer[next] == 0x0A { return (index, next + 1) }
                if next + 1 < buffer.endIndex, buffer[next] == 0x0D, buffer[next + 1] == 0x0A { return (index, next + 2) }
            }
            index += 1
        }
        return nil
    }

    /// Splits the header section into lines, dropping CR before LF.
    static func lines(_ bytes: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        var lineStart = bytes.startIndex
        var index = bytes.startIndex
        while index <= bytes.endIndex {
            if index == bytes.endIndex || bytes[index] == 0x0A {
                var end = index
                if end > lineStart, bytes[end - 1] == 0x0D { end -= 1 }
                result.append(bytes[lineStart..<end])
                lineStart = index + 1
            }
            index += 1
        }
        return result
    }

    private func parseRequestLine(_ line: ArraySlice<UInt8>) throws(HTTPParseError) -> HTTPRequest {
        let parts = line.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw HTTPParseError(status: 400, message: "malformed request line (expected METHOD PATH HTTP/1.1)")
        }
        guard parts[0].count <= 16, parts[0].allSatisfy(Self.isTokenByte) else {
            throw HTTPParseError(status: 400, message: "malformed method in the request line")
        }
        let method = String(decoding: parts[0], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        let minor: Int
        switch version {
        case "HTTP/1.1": minor = 1
        case "HTTP/1.0": minor = 0
        default:
            guard version.hasPrefix("HTTP/"), version.utf8.count <= 16 else {
                throw HTTPParseError(status: 400, message: "malformed HTTP version in the request line")
            }
            throw HTTPParseError(status: 505, message: "HTTP version '\(version)' is not supported; use HTTP/1.1")
        }
        let target = parts[1]
        guard target.first == UInt8(ascii: "/"), target.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw HTTPParseError(status: 400, message: "the request target must be a path starting with '/'")
        }
        var path = target
        var query: String?
        if let mark = target.firstIndex(of: UInt8(ascii: "?")) {
            path = target[target.startIndex..<mark]
            query = String(decoding: target[(mark + 1)...], as: UTF8.self)
        }
        return HTTPRequest(method: method, path: String(decoding: path, as: UTF8.self), query: query, minorVersion: minor)
    }

    private func parseHeaderField(_ line: ArraySlice<UInt8>) throws(HTTPParseError) -> (name: String, value: String) {
        guard let first = line.first else { throw HTTPParseError(status: 400, message: "empty header line") }
        if first == 0x20 || first == 0x09 {
            throw HTTPParseError(status: 400, message: "folded header lines are not allowed")
        }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
            throw HTTPParseError(status: 400, message: "header line without ':'")
        }
        let name = line[line.startIndex..<colon]
        guard !name.isEmpty, name.allSatisfy(Self.isTokenByte) else {
            throw HTTPParseError(status: 400, message: "malformed header name")
        }
        var value = line[(colon + 1)...]
        while let byte = value.first, byte == 0x20 || byte == 0x09 { value = value.dropFirst() }
        while let byte = value.last, byte == 0x20 || byte == 0x09 { value = value.dropLast() }
        guard value.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
            throw HTTPParseError(status: 400, message: "control character in header '\(String(decoding: name, as: UTF8.self))'")
        }
        return (String(decoding: name, as: UTF8.self).lowercased(), String(decoding: value, as: UTF8.self))
    }

    private func parseContentLength(_ value: String) throws(HTTPParseError) -> Int {
        guard !value.isEmpty, value.utf8.count <= 18, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let length = Int(value) else {
            throw HTTPParseError(status: 400, message: "invalid Content-Length '\(value.prefix(32))'")
        }
        return length
    }

    /// RFC 9110 tchar.
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default:
            tokenPunctuation.contains(byte)
        }
    }

    private static let tokenPunctuation: [UInt8] = Array("!#$%&'*+-.^_`|~".utf8)
}

extension Substring {
    var trimmingSpaces: String {
        var text = self
        while text.first == " " || text.first == "\t" { text = text.dropFirst() }
        while text.last == " " || text.last == "\t" { text = text.dropLast() }
        return String(text)
    }
}
