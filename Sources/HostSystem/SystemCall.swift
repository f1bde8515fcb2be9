import Glibc

/// An errno value with a readable name, returned by every failing syscall.
public struct Errno: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32

    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static var current: Errno { Errno(rawValue: Glibc.errno) }

    public static let interrupted = Errno(rawValue: EINTR)
    public static let wouldBlock = Errno(rawValue: EAGAIN)
    public static let noEntry = Errno(rawValue: ENOENT)
    public static let permissionDenied = Errno(rawValue: EACCES)
    public static let invalidArgument = Errno(rawValue: EINVAL)
    public static let badFileDescriptor = Errno(rawValue: EBADF)

    public var description: String {
        guard let message = strerror(rawValue) else { return "errno \(rawValue)" }
        return "\(String(cString: message)) (errno \(rawValue))"
    }
}

/// A failed system call: which call, and the errno it returned.
public struct SystemCallError: Error, Equatable, Sendable, CustomStringConvertible {
    public let call: String
    public let errno: Errno

    public init(call: String, errno: Errno) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call) failed: \(errno)" }
}

/// Runs `body` until it returns something other than -1 with EINTR, and turns
/// -1 into a typed error. Every syscall in Swiftlet goes through here; errno is
/// read immediately after the call, before anything else can overwrite it.
@inline(__always)
@inlinable  // specialized per call site: generic, each call would go through witness tables
public func systemCall<Result: FixedWidthInteger>(
    _ name: @autoclosure () -> String,
    retryOnInterrupt: Bool = true,
    _ body: () -> Result
) throws(SystemCallError) -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno.current
        if error == .interrupted && retryOnInterrupt { continue }
        throw SystemCallError(call: name(), errno: error)
    }
}
