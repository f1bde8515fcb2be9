import HostSystem

/// Why a QMP connection or command failed.
public enum QMPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The socket could not be connected (no QEMU there, or not listening yet).
    case connect(path: String, cause: SystemCallError)
    case io(step: String, cause: SystemCallError)
    /// The peer closed the socket: QEMU exited (or another client took the monitor).
    case closed(step: String)
    case timeout(step: String, seconds: Double)
    /// Malformed JSON, a line too long, missing keys, an unexpected greeting.
    case protocolViolation(String)
    /// QEMU answered {"error": {"class": ..., "desc": ...}}.
    case commandFailed(command: String, errorClass: String, description: String)

    public var description: String {
        switch self {
        case .connect(let path, let cause): "QMP: cannot connect to \(path): \(cause)"
        case .io(let step, let cause): "QMP: \(step): \(cause)"
        case .closed(let step): "QMP: QEMU closed the connection (\(step))"
        case .timeout(let step, let seconds): "QMP: no answer within \(seconds) s (\(step))"
        case .protocolViolation(let message): "QMP: protocol violation: \(message)"
        case .commandFailed(let command, let errorClass, let description): "QMP: \(command) failed: \(errorClass): \(description)"
        }
    }
}

/// One asynchronous event, e.g. STOP, RESUME, SHUTDOWN.
public struct QMPEvent: Sendable, Equatable {
    public var name: String
    public var data: [String: QMPValue]
    /// Seconds since the epoch, from QEMU's {"seconds", "microseconds"}.
    public var timestamp: Double?

    public init(name: String, data: [String: QMPValue] = [:], timestamp: Double? = nil) {
        self.name = name
        self.data = data
        self.timestamp = timestamp
    }
}
