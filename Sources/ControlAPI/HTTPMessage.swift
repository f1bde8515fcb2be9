/// One HTTP/1.1 request as the control API sees it.
public struct HTTPRequest: Equatable, Sendable {
    public var method: String
    /// The path of the request target, without the query.
    public var path: String
    /// The query after `?`, if any (the API ignores it).
    public var query: String?
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion: Int
    /// Header fields in arrival order, names lower-cased.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// Whether the connection stays open after the response.
    public var keepAlive: Bool

    public init(method: String, path: String, query: String? = nil, minorVersion: Int = 1,
                headers: [(name: String, value: String)] = [], body: [UInt8] = [], keepAlive: Bool = true) {
        self.method = method
        self.path = path
        self.query = query
        self.minorVersion = minorVersion
        self.headers = headers
        self.body = body
        self.keepAlive = keepAlive
    }

    /// The first header named `name` (lower-case).
    public func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value
    }

    public static func == (lhs: HTTPRequest, rhs: HTTPRequest) -> Bool {
        lhs.method == rhs.method && lhs.path == rhs.path && lhs.query == rhs.query
            && lhs.minorVersion == rhs.minorVersion && lhs.body == rhs.body && lhs.keepAlive == rhs.keepAlive
            && lhs.headers.count == rhs.headers.count
            && zip(lhs.headers, rhs.headers).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }
}

/// A response: status, extra headers, body (JSON unless said otherwise).
public struct HTTPResponse: Equatable, Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// Close the connection after sending (set for unrecoverable request errors).
    public var closesConnection: Bool

    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = [], closesConnection: Bool = false) {
        self.status = status
        self.headers = headers
        self.body = body
        self.closesConnection = closesConnection
    }

    public static func == (lhs: HTTPResponse, rhs: HTTPResponse) -> Bool {
        lhs.status == rhs.status && lhs.body == rhs.body && lhs.closesConnection == rhs.closesConnection
            && lhs.headers.count == rhs.headers.count
            && zip(lhs.headers, rhs.headers).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }

    /// 204 No Content: the usual answer to a successful PUT/PATCH.
    public static let noContent = HTTPResponse(status: 204)

    /// 200 with a JSON body.
    public static func json(_ text: String, status: Int = 200) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "application/json")], body: Array(text.utf8))
    }

    /// An error in Firecracker's shape: `{"fault_message": "..."}`.
    public static func fault(_ status: Int, _ message: String, closesConnection: Bool = false) -> HTTPResponse {
        var response = json(JSONText.object([("fault_message", JSONText.string(message))]), status: status)
        response.closesConnection = closesConnection
        return response
    }

    /// The response as bytes on the wire.
    public func serialized(keepAlive: Bool) -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(Self.reasonPhrase(status))\r\nServer: swiftlet\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        // 1xx and 204 carry no body and so no length.
        if status >= 200 && status != 204 { head += "Content-Length: \(body.count)\r\n" }
        if !keepAlive || closesConnection { head += "Connection: close\r\n" }
        head += "\r\n"
        return Array(head.utf8) + body
    }

    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 100: "Continue"
        case 200: "OK"
        case 204: "No Content"
        case 400: "Bad Request"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 411: "Length Required"
        case 413: "Content Too Large"
        case 415: "Unsupported Media Type"
        case 417: "Expectation Failed"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 503: "Service Unavailable"
        case 505: "HTTP Version Not Supported"
        default: "Status \(status)"
        }
    }
}

/// Small helpers that write JSON text directly (LeanJSON's `JSONValue`
/// serializes too; these keep handlers short).
enum JSONText {
    static func string(_ text: String) -> String {
        LeanJSONBridge.quoted(text)
    }

    static func object(_ members: [(String, String)]) -> String {
        "{" + members.map { string($0.0) + ":" + $0.1 }.joined(separator: ",") + "}"
    }

    static func array(_ elements: [String]) -> String {
        "[" + elements.joined(separator: ",") + "]"
    }

    static func bool(_ value: Bool) -> String { value ? "true" : "false" }
}
