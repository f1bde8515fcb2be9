import Glibc
import HostSystem

/// A request the API refuses: the HTTP status and a message naming the
/// problem, sent as `{"fault_message": ...}`. Nothing changes when one is thrown.
///
/// Firecracker answers every refusal with 400 (bad fields, unknown routes,
/// requests the VM's state does not allow alike) and 413 only when MMDS data
/// would exceed its size limit; its clients check for exactly 204/200 and
/// read `fault_message` otherwise. Swiftlet follows it.
public struct APIError: Error, Equatable, Sendable, CustomStringConvertible {
    public let status: Int
    public let message: String
    /// For 405: the methods the path has, sent as `Allow`.
    public let allowedMethods: [String]

    public init(_ status: Int, _ message: String, allowedMethods: [String] = []) {
        self.status = status
        self.message = message
        self.allowedMethods = allowedMethods
    }

    /// Bad input: malformed JSON, unknown fields, wrong types, bad values.
    public static func badRequest(_ message: String) -> APIError { APIError(400, message) }
    /// Valid, but not in the VM's current state. Firecracker answers these
    /// with 400 too; the name remains for what the refusal means.
    public static func conflict(_ message: String) -> APIError { APIError(400, message) }

    /// Firecracker's refusal of a pre-boot-only request once the VM has started
    /// (PUT /boot-source, /machine-config, /vsock, /mmds/config, ... and
    /// InstanceStart twice), word for word: clients match on it.
    public static let notSupportedAfterStart = APIError(400, "The requested operation is not supported after starting the microVM.")
    /// Firecracker's refusal of a runtime-only request before InstanceStart
    /// (PATCH /drives, PATCH /network-interfaces, pause, FlushMetrics, ...).
    public static let notSupportedBeforeStart = APIError(400, "The requested operation is not supported before starting the microVM.")

    /// An unknown path, or a method the path does not have (Firecracker's wording).
    public static func invalidPathOrMethod(method: String, path: String) -> APIError {
        APIError(400, "Invalid request method and/or path: \(method) \(path.prefix(200)).")
    }

    /// A known path with a method it does not have: Firecracker's words, but
    /// 405 with `Allow` as HTTP says (Firecracker answers 400; its clients
    /// treat both as a refusal and never send such requests).
    public static func methodNotAllowed(method: String, path: String, allowed: [String]) -> APIError {
        APIError(405, "Invalid request method and/or path: \(method.prefix(20)) \(path.prefix(200)).", allowedMethods: allowed)
    }

    /// A body that is not what the resource takes, in the words of
    /// Firecracker's JSON layer (serde), which clients match on:
    /// "unknown field `x`", "missing field `x`", "invalid type: ...".
    public static func deserialization(_ detail: String) -> APIError {
        APIError(400, "An error occurred when deserializing the json body of a request: \(detail).")
    }

    /// An errno as Rust's io::Error prints it, which Firecracker's messages
    /// (and so its clients' checks) use: "No such file or directory (os error 2)".
    public static func osError(_ errno: Errno) -> String {
        let text = strerror(errno.rawValue).map { String(cString: $0) } ?? "Unknown error"
        return "\(text) (os error \(errno.rawValue))"
    }

    public var description: String { message }
    var response: HTTPResponse {
        var response = HTTPResponse.fault(status, message)
        if !allowedMethods.isEmpty { response.headers.append((name: "Allow", value: allowedMethods.joined(separator: ", "))) }
        return response
    }
}
