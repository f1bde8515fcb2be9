import Glibc
import HostSystem

/// A device's I/O thread: waits on file descriptors (queue notification
/// eventfds, a tap, ...) with epoll and calls `onReady` with the indices of
/// those that are readable. `stop()` wakes it and joins it.
public final class VirtioWorker: Sendable {
    let epoll: Epoll
    let stopEvent: EventFD
    let thread: HostThread
    static let stopToken = UInt64.max

    /// Starts the thread. `descriptors[i]` is reported as index `i`; they stay
    /// owned by the caller and must outlive the worker.
    public init(name: String, descriptors: [Int32], onReady: @escaping @Sendable (_ ready: [Int]) -> Void) throws(SystemCallError) {
        let epoll = try Epoll()
        let stopEvent = try EventFD()
        try epoll.add(stopEvent.descriptor.rawValue, token: Self.stopToken)
        for (index, descriptor) in descriptors.enumerated() {
            try epoll.add(descriptor, token: UInt64(index))
        }
        self.epoll = epoll
        self.stopEvent = stopEvent
        thread = try HostThread(name: name) {
            while true {
                guard let events = try? epoll.wait(timeout: -1) else { continue }
                if events.contains(where: { $0.token == Self.stopToken }) { return }
                let ready = events.map { Int($0.token) }
                if !ready.isEmpty { onReady(ready) }
            }
        }
    }

    /// Stops watching descriptor `index` (e.g. a tap while no RX buffers are
    /// available) or watches it again; call from the worker thread.
    public func setWatching(_ descriptor: Int32, index: Int, _ watching: Bool) {
        if watching {
            try? epoll.add(descriptor, token: UInt64(index))
        } else {
            try? epoll.remove(descriptor)
        }
    }

    /// Wakes the thread and waits for it to return.
    public func stop() {
        try? stopEvent.signal()
        thread.join()
    }
}
