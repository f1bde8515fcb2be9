import HostSystem
import RateLimiter
import Synchronization
import Virtio

/// Serves the request queue on the device's worker thread: on each
/// notification, drain every available chain, then interrupt the driver once
/// if it asked for one (batching), then re-enable notifications.
///
/// With a rate limiter, a request the limiter refuses is kept (`deferred`)
/// and the queue stops: notifications stay off and the worker sleeps until
/// the limiter's timer fires, then serves the deferred request first. Runtime
/// updates (a new image, new buckets) are applied here, between requests.
final class BlockEventHandler: Sendable {
    /// The indices the worker reports its descriptors by.
    enum Token {
        static let notification = 0
        static let update = 1
        static let timer = 2
    }

    struct QueueState: Sendable {
        var queue: Virtqueue
        var processor: BlockRequestProcessor
        var limiter: RateLimiter
        /// A chain the limiter refused, served before any other.
        var deferred: DescriptorChain?
        /// The device's `BackingState.generation` this worker serves.
        var generation: UInt64
        /// Set when the queue broke the protocol; nothing is served until reset.
        var broken = false
        /// Held for a snapshot: notifications are taken but nothing is served.
        var suspended = false
    }

    let queueIndex: Int
    let notification: EventFD
    let interrupt: any VirtioInterrupt
    let counters: VirtioCounters
    let name: String
    /// The device's shared state: pending updates come from here.
    let backing: BlockBackingStore?
    /// Signalled by the device when `backing` has an update.
    let updateEvent: EventFD?
    /// Times the worker woke (tests check that nothing spins).
    let wakeups = Atomic<UInt64>(0)
    /// Only the worker thread takes this lock; it makes the queue Sendable.
    let state: Mutex<QueueState>

    init(processor: BlockRequestProcessor, queue: VirtioQueueActivation, interrupt: any VirtioInterrupt, name: String,
         limiter: RateLimiter, backing: BlockBackingStore? = nil, updateEvent: EventFD? = nil, generation: UInt64 = 0) {
        self.updateEvent = updateEvent
        queueIndex = queue.index
        notification = queue.notification
        self.interrupt = interrupt
        counters = processor.counters
        self.name = name
        self.backing = backing
        state = Mutex(QueueState(queue: queue.queue, processor: processor, limiter: limiter, generation: generation))
    }

    /// The worker's descriptors, by `Token` index.
    static func descriptors(notification: EventFD, update: EventFD, limiter: RateLimiter) -> [Int32] {
        [notification.descriptor.rawValue, update.descriptor.rawValue, limiter.descriptor]
    }

    /// Descriptors `ready` (by `Token`) are readable.
    func handle(_ ready: [Int]) {
        wakeups.wrappingAdd(1, ordering: .relaxed)
        var updated = false, timer = false
        for token in ready {
            switch token {
            case Token.notification:
                // Consume before draining: a notify that lands while we drain wakes us again.
                if let count = try? notification.consume() {
                    counters.notifications.wrappingAdd(count, ordering: .relaxed)
                }
            case Token.update:
                _ = try? updateEvent?.consume()
                updated = true
            case Token.timer: timer = true
            default: break
            }
        }
        state.withLock { state in
            if timer { state.limiter.timerFired() }
            if updated { applyUpdates(&state) }
            serve(&state)
        }
    }

    /// The notification eventfd is readable (tests drive the handler this way).
    func notified() { handle([Token.notification]) }

    /// Drains the queue unless it is broken or the limiter is blocked.
    func serve(_ state: inout QueueState) {
        guard !state.broken, !state.suspended, !state.limiter.isBlocked else { return }
        do {
            try drain(&state)
        } catch {
            state.broken = true
            state.deferred = nil
            interrupt.reportDeviceError("\(name): request queue: \(error)")
        }
    }

    func drain(_ state: inout QueueState) throws(VirtqueueError) {
        try state.queue.disableNotifications()
        let processor = state.processor
        var limiter = state.limiter
        defer { state.limiter = limiter }
        while true {
            var throttled = false
            while let chain = try next(&state) {
                let outcome: BlockRequestOutcome
                if limiter.isUnlimited {
                    outcome = processor.handle(chain)
                } else if let served = processor.handle(chain, admit: { limiter.consume(operationOf: $0.transferLength) }) {
                    outcome = served
                } else {
                    // Out of tokens: keep the chain and stop until the timer fires.
                    state.deferred = chain
                    throttled = true
                    break
                }
                try state.queue.addUsed(head: chain.head, writtenLength: outcome.writtenLength)
            }
            if try state.queue.shouldInterrupt() {
                interrupt.signalUsedBuffers(queue: queueIndex)
            }
            // Throttled: notifications stay off (the driver need not kick a
            // queue that is not being served); the timer brings us back.
            if throttled { return }
            // True when chains arrived after the last pop: serve them too.
            if try !state.queue.enableNotifications() { return }
        }
    }

    /// Stops serving for a snapshot and returns the queue's walking state.
    /// The lock is the worker's for a whole drain, and a drain completes
    /// every chain it takes, so once it is ours nothing is in flight. A
    /// chain the limiter deferred was taken but not served: the saved state
    /// rewinds over it, so a restored device takes it again.
    func suspend() -> VirtqueueState {
        state.withLock { state in
            state.suspended = true
            var walk = state.queue.walkState
            if state.deferred != nil { walk.nextAvailable &-= 1 }
            return walk
        }
    }

    /// Serves again after `suspend` (the caller wakes the worker).
    func unsuspend() {
        state.withLock { $0.suspended = false }
    }

    /// The deferred chain, else the next available one.
    func next(_ state: inout QueueState) throws(VirtqueueError) -> DescriptorChain? {
        if let chain = state.deferred {
            state.deferred = nil
            return chain
        }
        return try state.queue.popChain()
    }

    /// Takes what the API changed since the last look: a new image (new
    /// capacity and serial, configuration space rewritten, config interrupt)
    /// and limiter updates.
    func applyUpdates(_ state: inout QueueState) {
        guard let backing else { return }
        let (disk, serial, limiterUpdate, generation) = backing.withLock { backing in
            defer { backing.pendingLimiterUpdate = .none }
            if backing.generation != state.generation {
                backing.configurationSpace = VirtioBlockDevice.configurationSpace(for: backing.disk)
            }
            return (backing.disk, backing.serialBytes, backing.pendingLimiterUpdate, backing.generation)
        }
        state.limiter.update(limiterUpdate)
        guard generation != state.generation else { return }
        state.generation = generation
        let old = state.processor
        state.processor = BlockRequestProcessor(disk: disk, memory: old.memory, features: old.limits.features,
                                                identifier: serial, counters: old.counters)
        // The configuration space already shows the new capacity: tell the driver.
        interrupt.signalConfigurationChange()
    }
}
