/// Why bytes from the other end of an agent connection were refused. Every
/// case names what was being read; the connection is closed after any of
/// them (the agent itself lives on).
public enum AgentProtocolError: Error, Equatable, Sendable {
    /// A frame announced a payload larger than `AgentFrame.maximumPayload`.
    case frameTooLarge(length: UInt32, limit: UInt32)
    /// A frame had a length of zero (no type byte).
    case emptyFrame
    /// A frame type this version does not know.
    case unknownFrameType(UInt8)
    /// A frame arrived where the protocol does not allow it.
    case unexpectedFrame(FrameType, expected: String)
    /// A field ran past the end of its frame.
    case truncated(field: String)
    /// Bytes were left after the last field of a frame.
    case trailingBytes(frame: FrameType, count: Int)
    /// A field's value is out of range (a count, a length, an enum).
    case invalidField(field: String, value: UInt64)
    /// The peer speaks a protocol version we do not.
    case unsupportedVersion(UInt16)
}

extension AgentProtocolError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .frameTooLarge(let length, let limit): return "frame of \(length) bytes is over the limit of \(limit)"
        case .emptyFrame: return "frame of length 0 (no type byte)"
        case .unknownFrameType(let type): return "unknown frame type \(type)"
        case .unexpectedFrame(let type, let expected): return "unexpected \(type.name) frame (expected \(expected))"
        case .truncated(let field): return "frame ends inside the field '\(field)'"
        case .trailingBytes(let frame, let count): return "\(count) bytes after the last field of a \(frame.name) frame"
        case .invalidField(let field, let value): return "field '\(field)' has the invalid value \(value)"
        case .unsupportedVersion(let version): return "protocol version \(version) is not supported (this side speaks \(AgentFrame.protocolVersion))"
        }
    }
}
