import CKVM
import Glibc

/// A Linux eventfd: a counter that wakes pollers, and what KVM's irqfd and
/// ioeventfd speak.
public final class EventFD: Sendable {
    public let descriptor: OwnedFileDescriptor

    public init(nonBlocking: Bool = true) throws(SystemCallError) {
        let flags = Int32(EFD_CLOEXEC) | (nonBlocking ? Int32(EFD_NONBLOCK) : 0)
        descriptor = OwnedFileDescriptor(adopting: try systemCall("eventfd") { eventfd(0, flags) })
    }

    /// Adds `value` to the counter, waking pollers.
    public func signal(_ value: UInt64 = 1) throws(SystemCallError) {
        var value = value
        // SAFETY: 8 bytes of a local UInt64, as eventfd requires.
        _ = try withUnsafeBytes(of: &value) { (raw) throws(SystemCallError) -> Int in
            try descriptor.write(raw)
        }
    }

    /// Reads and resets the counter; nil if it was zero (non-blocking).
    public func consume() throws(SystemCallError) -> UInt64? {
        var value: UInt64 = 0
        do {
            // SAFETY: 8 bytes of a local UInt64, as eventfd requires.
            _ = try withUnsafeMutableBytes(of: &value) { (raw) throws(SystemCallError) -> Int in
                try descriptor.read(into: raw)
            }
        } catch where error.errno == .wouldBlock {
            return nil
        }
        return value
    }
}
