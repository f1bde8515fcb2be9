#if canImport(AgentProtocol)
import AgentProtocol
#endif
import CAgentSys

/// Why the agent could not do something. Each case names the step; system
/// calls carry their errno.
enum AgentError: Error {
    case system(step: String, errno: Int32)
    case protocolViolation(AgentProtocolError)
    /// The peer closed the connection.
    case closed
    /// A request the agent answers with an `error` frame.
    case refused(AgentErrorCode, String)

    var message: String {
        switch self {
        case .system(let step, let code): return "\(step): \(errorText(code))"
        case .protocolViolation(let error): return error.description
        case .closed: return "connection closed"
        case .refused(_, let message): return message
        }
    }

    /// The code an `error` frame reports for this failure.
    var code: AgentErrorCode {
        switch self {
        case .system(_, let code):
            if code == ENOENT || code == ENOTDIR { return .notFound }
            if code == EACCES || code == EPERM { return .permissionDenied }
            return .system
        case .protocolViolation, .closed: return .badRequest
        case .refused(let code, _): return code
        }
    }
}

func errorText(_ code: Int32) -> String {
    guard let text = strerror(code) else { return "errno \(code)" }
    return String(cString: text) + " (errno \(code))"
}

/// Runs a system call, retrying EINTR; a negative result becomes
/// `AgentError.system` naming `step`.
@discardableResult
func systemCall(_ step: String, _ call: () -> Int) throws(AgentError) -> Int {
    while true {
        let result = call()
        if result >= 0 { return result }
        let code = agent_errno()
        if code == EINTR { continue }
        throw .system(step: step, errno: code)
    }
}

/// Writes a line to stderr, at most `perSecond` lines a second, so a
/// hostile client cannot flood the guest's console through the agent.
/// Shared by every connection thread; its state is guarded by the pthread mutex.
final class RateLimitedLog: @unchecked Sendable {
    private var second: UInt64 = 0
    private var count: Int32 = 0
    private let perSecond: Int32 = 5
    private let lock: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
    }

    func line(_ text: String) {
        pthread_mutex_lock(lock)
        let now = agent_monotonic_ms() / 1000
        if now != second {
            second = now
            count = 0
        }
        count += 1
        let allowed = count <= perSecond
        pthread_mutex_unlock(lock)
        guard allowed else { return }
        let bytes = Array(("swiftlet-agent: " + text + "\n").utf8)
        // SAFETY: the buffer lives for the duration of the call.
        _ = bytes.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count) }
    }
}

let log = RateLimitedLog()

