import HostSystem
import Synchronization
import Virtio

/// Serves the request queue on the device's worker thread: on each
/// notification, drain every available chain, then interrupt the driver once
/// if it asked for one (batching), then re-enable notifications.
final class BlockEventHandler: Sendable {
    struct QueueState: Sendable {
        var queue: Virtqueue
        /// Set when the queue broke the protocol; nothing is served until reset.
        var broken = false
    }

    let processor: BlockRequestProcessor
    let queueIndex: Int
    let notification: EventFD
    let interrupt: any VirtioInterrupt
    let counters: VirtioCounters
    let name: String
    /// Only the worker thread takes this lock; it makes the queue Sendable.
    let state: Mutex<QueueState>

    init(processor: BlockRequestProcessor, queue: VirtioQueueActivation, interrupt: any VirtioInterrupt, name: String) {
        self.processor = processor
        queueIndex = queue.index
        notification = queue.notification
        self.interrupt = interrupt
        counters = processor.counters
        self.name = name
        state = Mutex(QueueState(queue: queue.queue))
    }

    /// The notification eventfd is readable.
    func notified() {
        // Consume before draining: a notify that lands while we drain wakes us again.
        if let count = try? notification.consume() {
            counters.notifications.add(count, ordering: .relaxed)
        }
        state.withLock { state in
            guard !state.broken else { return }
            do {
                try drain(&state.queue)
            } catch {
                state.broken = true
                interrupt.reportDeviceError("\(name): request queue: \(error)")
            }
        }
    }

    func drain(_ queue: inout Virtqueue) throws(VirtqueueError) {
        try queue.disableNotifications()
        while true {
            while let chain = try queue.popChain() {
                let outcome = processor.handle(chain)
                try queue.addUsed(head: chain.head, writtenLength: outcome.writtenLength)
            }
            if try queue.shouldInterrupt() {
                interrupt.signalUsedBuffers(queue: queueIndex)
            }
            // True when chains arrived after the last pop: serve them too.
            if try !queue.enableNotifications() { return }
        }
    }
}
