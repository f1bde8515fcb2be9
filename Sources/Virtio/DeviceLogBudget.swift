import Synchronization

/// Bounds how many lines a guest can make one device log: a driver that
/// resets and breaks the protocol in a loop would otherwise write a line per
/// round. The first `limit` lines pass; the last of them says that later
/// ones are dropped.
public final class DeviceLogBudget: Sendable {
    public static let defaultLimit = 16
    private let remaining: Atomic<Int>

    public init(limit: Int = DeviceLogBudget.defaultLimit) {
        remaining = Atomic(max(limit, 0))
    }

    /// The line to log for `message`, or nil once the budget is spent.
    public func admit(_ message: String) -> String? {
        let before = remaining.subtract(1, ordering: .relaxed).oldValue
        if before > 1 { return message }
        if before == 1 { return message + " (further messages from this device are not logged)" }
        remaining.store(0, ordering: .relaxed)
        return nil
    }
}
