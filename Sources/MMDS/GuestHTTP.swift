/// One HTTP/1.x request from the guest to MMDS. MMDS requests carry no
/// body; the header block is all there is.
public struct MetadataRequest: Equatable, Sendable {
    public var method: String
    /// The absolute path of the target ("/latest/meta-data"), without the
    /// query; empty when the target had none ("http://host").
    public var path: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion: Int
    /// Header fields in arrival order, names as sent.
    public var headers: [Header]
    /// The connection should close after the response.
    public var closesConnection: Bool

    public struct Header: Equatable, Sendable {
        public var name: String
        public var value: String
    }

    /// The first header with one of `names` (compared case-insensitively).
    public func header(_ names: String...) -> Header? {
        headers.first { header in names.contains { $0 == header.name.lowercased() } }
    }
}

/// An answer to the guest, serialized as HTTP/1.x.
public struct MetadataResponse: Equatable, Sendable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    public var extraHeaders: [MetadataRequest.Header]
    /// Close the connection once sent (the request asked for it, or the
    /// byte stream can no longer be trusted to hold request boundaries).
    public var closesConnection: Bool

    public init(status: Int, contentType: String = "text/plain", body: String,
                extraHeaders: [MetadataRequest.Header] = [], closesConnection: Bool = false) {
        self.status = status
        self.contentType = contentType
        self.body = Array(body.utf8)
        self.extraHeaders = extraHeaders
        self.closesConnection = closesConnection
    }

    /// The bytes on the wire, answering in the request's HTTP version.
    public func serialized(minorVersion: Int) -> [UInt8] {
        var head = "HTTP/1.\(minorVersion) \(status) \(Self.reasonPhrase(status))\r\n"
        head += "Server: Swiftlet MMDS\r\n"
        head += closesConnection ? "Connection: close\r\n" : "Connection: keep-alive\r\n"
        for header in extraHeaders { head += "\(header.name): \(header.value)\r\n" }
        head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n\r\n"
        return Array(head.utf8) + body
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 413: "Payload Too Large"
        case 501: "Not Implemented"
        default: "Status"
        }
    }
}

/// Finds and parses the guest's requests in a connection's receive buffer.
public enum MetadataRequestParser {
    public enum Outcome: Equatable, Sendable {
        /// No complete header block yet.
        case incomplete
        /// A request that used the first `consumed` bytes.
        case request(MetadataRequest, consumed: Int)
        /// Bytes that are not an acceptable request: answer with `response`
        /// (which closes the connection when the stream cannot be resynchronized).
        case invalid(MetadataResponse, consumed: Int)
    }

    /// Methods HTTP defines that MMDS answers with 405; others get 501.
    static let knownMethods: Set<String> = ["GET", "PUT", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"]
    static let maximumHeaders = 64

    /// Parses the first request in `bytes`: its header block ends with an
    /// empty line ("\r\n\r\n", or "\n\n" from sloppy clients).
    public static func parse(_ bytes: ArraySlice<UInt8>) -> Outcome {
        guard let end = endOfHeaders(bytes) else { return .incomplete }
        let consumed = end - bytes.startIndex
        let block = bytes[bytes.startIndex..<end]
        var lines = block.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { line -> Substring in
            let trimmed = line.last == UInt8(ascii: "\r") ? line.dropLast() : line
            return Substring(decoding: trimmed, as: UTF8.self)
        }
        while lines.last?.isEmpty == true { lines.removeLast() }
        func invalid(_ status: Int, _ message: String, close: Bool = false) -> Outcome {
            .invalid(MetadataResponse(status: status, body: message, closesConnection: close), consumed: consumed)
        }
        guard let requestLine = lines.first, block.allSatisfy({ $0 < 0x80 }) else {
            return invalid(400, "Invalid request.", close: true)
        }
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty }) else { return invalid(400, "Invalid request.", close: true) }
        let method = String(parts[0])
        guard knownMethods.contains(method) else { return invalid(501, "Unsupported HTTP method.") }
        let minorVersion: Int
        switch parts[2] {
        case "HTTP/1.0": minorVersion = 0
        case "HTTP/1.1": minorVersion = 1
        default: return invalid(501, "Unsupported HTTP version.")
        }
        guard let path = absolutePath(of: parts[1]) else { return invalid(400, "Invalid URI.") }

        var headers: [MetadataRequest.Header] = []
        var closes = minorVersion == 0
        for line in lines.dropFirst() {
            guard headers.count < maximumHeaders else { return invalid(400, "Invalid request.", close: true) }
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex else {
                return invalid(400, "Invalid header. Reason: Invalid format. Key: \(line.prefix(64))")
            }
            let name = String(line[..<colon]).trimmingSpaces
            let value = String(line[line.index(after: colon)...]).trimmingSpaces
            headers.append(MetadataRequest.Header(name: name, value: value))
            switch name.lowercased() {
            case "content-length":
                guard let length = UInt32(value) else {
                    return invalid(400, "Invalid header. Reason: Invalid value. Key:\(name); Value:\(value.prefix(64))", close: true)
                }
                // MMDS requests have no body, and one we did not read would
                // be taken for the next request: refuse and close.
                if length > 0 { return invalid(400, "Invalid request.", close: true) }
            case "transfer-encoding":
                if value.lowercased() != "identity" { return invalid(400, "Invalid request.", close: true) }
            case "connection":
                let tokens = value.lowercased().split(separator: ",").map { String($0).trimmingSpaces }
                if tokens.contains("close") { closes = true } else if tokens.contains("keep-alive") { closes = false }
            default:
                break
            }
        }
        return .request(MetadataRequest(method: method, path: path, minorVersion: minorVersion, headers: headers,
                                        closesConnection: closes), consumed: consumed)
    }

    /// The index just past the blank line ending the first header block.
    static func endOfHeaders(_ bytes: ArraySlice<UInt8>) -> Int? {
        var index = bytes.startIndex
        while index < bytes.endIndex {
            if bytes[index] == UInt8(ascii: "\n") {
                let next = index + 1
                if next < bytes.endIndex, bytes[next] == UInt8(ascii: "\n") { return next + 1 }
                if next + 1 < bytes.endIndex, bytes[next] == UInt8(ascii: "\r"), bytes[next + 1] == UInt8(ascii: "\n") { return next + 2 }
            }
            index += 1
        }
        return nil
    }

    /// "/a/b?q" -> "/a/b"; "http://169.254.169.254/a" -> "/a"; "http://host" -> "".
    /// nil for anything else (another scheme, a relative target).
    static func absolutePath(of target: Substring) -> String? {
        var rest = target
        if let cut = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) { rest = rest[..<cut] }
        if rest.hasPrefix("/") { return String(rest) }
        guard rest.lowercased().hasPrefix("http://") else { return nil }
        let afterScheme = rest.dropFirst("http://".count)
        guard let slash = afterScheme.firstIndex(of: "/") else { return "" }
        return String(afterScheme[slash...])
    }
}

extension String {
    /// Without leading and trailing spaces and tabs.
    var trimmingSpaces: String {
        let bytes = Array(utf8)
        guard let first = bytes.firstIndex(where: { $0 != 0x20 && $0 != 0x09 }),
              let last = bytes.lastIndex(where: { $0 != 0x20 && $0 != 0x09 }) else { return "" }
        return String(decoding: bytes[first...last], as: UTF8.self)
    }
}
