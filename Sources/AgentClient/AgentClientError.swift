import AgentProtocol
import HostSystem
#if canImport(Glibc)
import Glibc
#endif

/// Why talking to a guest agent failed. Each case names the step; the
/// descriptions are what the CLI prints.
public enum AgentClientError: Error, CustomStringConvertible, Sendable {
    /// The VMM's vsock socket is missing or refuses connections.
    case noVsockSocket(path: String, cause: SystemCallError)
    /// The VMM closed the connection instead of answering OK: nothing
    /// listens on the port in the guest.
    case noAgent(port: UInt32)
    /// No answer within the timeout.
    case timedOut(step: String, seconds: Double)
    /// A system call on the connection failed.
    case connection(step: String, cause: SystemCallError)
    /// The connection closed in the middle of `step`.
    case closed(step: String)
    /// The agent sent bytes that are not the protocol.
    case malformed(AgentProtocolError)
    /// The agent answered with an `error` frame.
    case agent(code: AgentErrorCode, message: String)
    /// The agent answered with a frame that does not fit the conversation.
    case unexpected(FrameType, step: String)
    /// A local file could not be read or written.
    case localFile(path: String, cause: SystemCallError)
    /// The daemon refused the agent request (status and its message).
    case daemon(status: Int, message: String)
    /// swiftletd's socket is missing or refuses connections.
    case daemonUnreachable(socket: String, cause: SystemCallError)

    public var description: String {
        switch self {
        case .noVsockSocket(let path, let cause):
            return "cannot reach the VM's vsock socket \(path) (\(cause.errno)); is the VM running with a vsock device?"
        case .noAgent(let port):
            return "no guest agent listens on vsock port \(port) in the guest (an image without swiftlet-agent, or it has not started yet)"
        case .timedOut(let step, let seconds):
            return "the guest agent did not answer within \(formatted(seconds)) s (\(step))"
        case .connection(let step, let cause):
            return "\(step): \(cause)"
        case .closed(let step):
            return "the connection to the guest agent closed during \(step)"
        case .malformed(let error):
            return "the guest agent sent a malformed frame: \(error)"
        case .agent(let code, let message):
            return "the guest agent refused: \(message) (\(code))"
        case .unexpected(let type, let step):
            return "the guest agent sent an unexpected \(type.name) frame during \(step)"
        case .localFile(let path, let cause):
            return "\(path): \(cause.errno)"
        case .daemon(let status, let message):
            return status == 0 ? "swiftletd: \(message)" : "swiftletd answered \(status): \(message)"
        case .daemonUnreachable(let socket, let cause):
            return "swiftletd is not reachable at \(socket) (\(cause.errno)); start it with `swiftletd`, or point --socket / SWIFTLET_SOCKET at its socket"
        }
    }

    /// Worth retrying while a guest boots: the socket or the agent is not there yet.
    public var isNotReady: Bool {
        switch self {
        case .noAgent: return true
        case .noVsockSocket(_, let cause): return cause.errno.rawValue == ENOENT || cause.errno.rawValue == ECONNREFUSED
        default: return false
        }
    }
}

private func formatted(_ seconds: Double) -> String {
    seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
}
