/// A request the API refuses: the HTTP status and a message naming the
/// problem, sent as `{"fault_message": ...}`. Nothing changes when one is thrown.
public struct APIError: Error, Equatable, Sendable, CustomStringConvertible {
    public let status: Int
    public let message: String

    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }

    /// Bad input: malformed JSON, unknown fields, wrong types, bad values.
    public static func badRequest(_ message: String) -> APIError { APIError(400, message) }
    /// Valid, but not in the VM's current state (pre-boot only after start, ...).
    public static func conflict(_ message: String) -> APIError { APIError(409, message) }

    public var description: String { message }
    var response: HTTPResponse { .fault(status, message) }
}
