import CKVM
import Glibc

/// An epoll instance. Each registration carries a 64-bit token that comes
/// back with its events.
public final class Epoll: Sendable {
    public let descriptor: OwnedFileDescriptor

    public struct Event: Sendable {
        public let token: UInt64
        public let events: UInt32

        public init(token: UInt64, events: UInt32) {
            self.token = token
            self.events = events
        }
    }

    public init() throws(SystemCallError) {
        descriptor = OwnedFileDescriptor(adopting: try systemCall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) })
    }

    public func add(_ fd: Int32, events: UInt32 = EPOLLIN.rawValue, token: UInt64) throws(SystemCallError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        _ = try systemCall("epoll_ctl add fd \(fd)") { epoll_ctl(descriptor.rawValue, EPOLL_CTL_ADD, fd, &event) }
    }

    /// Changes the events (and token) of a registered descriptor.
    public func modify(_ fd: Int32, events: UInt32, token: UInt64) throws(SystemCallError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        _ = try systemCall("epoll_ctl mod fd \(fd)") { epoll_ctl(descriptor.rawValue, EPOLL_CTL_MOD, fd, &event) }
    }

    public func remove(_ fd: Int32) throws(SystemCallError) {
        _ = try systemCall("epoll_ctl del fd \(fd)") { epoll_ctl(descriptor.rawValue, EPOLL_CTL_DEL, fd, nil) }
    }

    /// Waits for events; `timeout` in milliseconds, -1 to wait forever.
    /// An interrupted wait returns no events rather than retrying, so callers
    /// can check for stop requests.
    public func wait(maxEvents: Int = 32, timeout: Int32 = -1) throws(SystemCallError) -> [Event] {
        var raw = [epoll_event](repeating: epoll_event(), count: maxEvents)
        let count: Int32
        do {
            count = try systemCall("epoll_wait", retryOnInterrupt: false) {
                epoll_wait(descriptor.rawValue, &raw, Int32(maxEvents), timeout)
            }
        } catch where error.errno == .interrupted {
            return []
        }
        return raw.prefix(Int(count)).map { Event(token: $0.data.u64, events: $0.events) }
    }
}
