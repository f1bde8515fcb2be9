import CKVM
import Glibc

/// A one-shot Linux timerfd on CLOCK_MONOTONIC: readable once the time set
/// by `arm` has passed, so a worker's epoll can wait for it alongside its
/// other descriptors (rate limiters resume throttled queues this way).
public final class TimerFD: Sendable {
    public let descriptor: OwnedFileDescriptor

    public init() throws(SystemCallError) {
        descriptor = OwnedFileDescriptor(adopting: try systemCall("timerfd_create") {
            timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        })
    }

    /// Fires once, `nanoseconds` from now (at least 1 ns: zero would disarm),
    /// replacing any earlier setting.
    public func arm(nanoseconds: UInt64) throws(SystemCallError) {
        let delay = max(nanoseconds, 1)
        var setting = itimerspec()
        setting.it_value.tv_sec = Int(clamping: delay / 1_000_000_000)
        setting.it_value.tv_nsec = Int(delay % 1_000_000_000)
        _ = try systemCall("timerfd_settime") { timerfd_settime(descriptor.rawValue, 0, &setting, nil) }
    }

    /// Cancels a pending expiry and forgets an unread one.
    public func disarm() throws(SystemCallError) {
        var setting = itimerspec()
        _ = try systemCall("timerfd_settime") { timerfd_settime(descriptor.rawValue, 0, &setting, nil) }
        _ = try consume()
    }

    /// Reads the expiry count; nil when the timer has not fired (non-blocking).
    public func consume() throws(SystemCallError) -> UInt64? {
        var count: UInt64 = 0
        do {
            // SAFETY: 8 bytes of a local UInt64, as timerfd requires.
            _ = try withUnsafeMutableBytes(of: &count) { (raw) throws(SystemCallError) -> Int in
                try descriptor.read(into: raw)
            }
        } catch where error.errno == .wouldBlock {
            return nil
        }
        return count
    }
}
