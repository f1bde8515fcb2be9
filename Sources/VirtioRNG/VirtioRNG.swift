import GuestMemory
import HostSystem
import RateLimiter
import Synchronization
import Virtio

/// virtio-rng (VirtIO 1.2 section 5.4): one request queue whose
/// device-writable buffers the device fills with bytes from the host's
/// getrandom(2). The work runs on the device's own worker thread. An
/// optional rate limiter (Firecracker's entropy `rate_limiter`) charges one
/// operation and the bytes served per request.
public final class VirtioRNG: VirtioDevice {
    /// The most bytes returned for one request; the driver asks again for
    /// more (the specification lets the device write fewer bytes than offered).
    public static let maximumBytesPerRequest = 64 * 1024
    public static let queueSize: UInt16 = 256

    public let deviceType = VirtioDeviceType.entropy
    public let queueMaximumSizes: [UInt16] = [VirtioRNG.queueSize]
    public let offeredFeatures: UInt64 = VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
    public let counters = VirtioCounters()

    /// The bytes source: getrandom by default; tests substitute their own.
    let source: @Sendable (UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int
    /// Limits on requests and bytes served.
    public let rateLimiter: RateLimiterConfiguration
    let running = Mutex<(worker: VirtioWorker, queue: RequestQueue)?>(nil)

    public init(rateLimiter: RateLimiterConfiguration = .unlimited) {
        source = VirtioRNG.getrandom
        self.rateLimiter = rateLimiter
    }

    init(rateLimiter: RateLimiterConfiguration = .unlimited,
         source: @escaping @Sendable (UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int) {
        self.source = source
        self.rateLimiter = rateLimiter
    }

    /// Fills as much of `buffer` as getrandom gives in one call.
    static let getrandom: @Sendable (UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int = { buffer in
        try fillRandom(buffer)
    }

    /// virtio-rng has no configuration space.
    public func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
    }

    public func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {}

    public func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {
        reset()
        // The driver may leave the queue disabled: then there is nothing to serve.
        guard let queue = activation.queues.first(where: { $0.index == 0 }) else { return }
        do {
            let limiter = RateLimiter(rateLimiter, timer: try MonotonicTimer())
            let requests = RequestQueue(activation: activation, queue: queue, counters: counters, source: source, limiter: limiter)
            let worker = try VirtioWorker(name: "virtio-rng", descriptors: [queue.notification.descriptor.rawValue, limiter.descriptor]) { ready in
                requests.serve(timerFired: ready.contains(1))
            }
            running.withLock { $0 = (worker, requests) }
        } catch {
            throw .activation(device: "\(deviceType)", step: "starting its worker thread", cause: "\(error)")
        }
        // Buffers the driver queued before DRIVER_OK (Linux does) need no notification.
        try? queue.notification.signal()
    }

    public func reset() {
        let stopped = running.withLock { running in
            defer { running = nil }
            return running
        }
        stopped?.worker.stop()
    }
}

/// The request queue as the worker thread owns it.
final class RequestQueue: Sendable {
    let index: Int
    let memory: GuestMemory
    let notification: EventFD
    let interrupt: any VirtioInterrupt
    let counters: VirtioCounters
    let source: @Sendable (UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int
    struct State {
        var queue: Virtqueue
        var limiter: RateLimiter
        /// A request the limiter refused, served first when its timer fires.
        var deferred: DescriptorChain?
        /// Held for a snapshot: notifications are taken but nothing is served.
        var suspended = false
    }
    let state: Mutex<State>
    /// Set when the driver broke the queue: nothing more is served until reset.
    let broken = Atomic<Bool>(false)

    init(activation: VirtioActivation, queue: VirtioQueueActivation, counters: VirtioCounters,
         source: @escaping @Sendable (UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int,
         limiter: RateLimiter = RateLimiter(.unlimited, timer: nil)) {
        index = queue.index
        memory = activation.memory
        notification = queue.notification
        interrupt = activation.interrupt
        self.counters = counters
        self.source = source
        state = Mutex(State(queue: queue.queue, limiter: limiter))
    }

    enum Failure: Error {
        case queue(VirtqueueError)
        case memory(GuestMemoryError)
        case host(SystemCallError)
    }

    /// Answers every available request (as far as the limiter allows), then
    /// interrupts the driver if it asked.
    func serve(timerFired: Bool = false) {
        if (try? notification.consume()) != nil {
            counters.notifications.wrappingAdd(1, ordering: .relaxed)
        }
        let result = state.withLock { state in
            if timerFired { state.limiter.timerFired() }
            guard !broken.load(ordering: .relaxed), !state.suspended, !state.limiter.isBlocked else { return Result<Void, Failure>.success(()) }
            return Result { () throws(Failure) in try process(&state) }
        }
        if case let .failure(failure) = result {
            broken.store(true, ordering: .relaxed)
            switch failure {
            case let .queue(error): interrupt.reportDeviceError("request queue: \(error)")
            case let .memory(error): interrupt.reportDeviceError("writing random bytes: \(error)")
            case let .host(error):
                counters.errors.wrappingAdd(1, ordering: .relaxed)
                interrupt.reportDeviceError("host entropy source: \(error)")
            }
        }
    }

    private func process(_ state: inout State) throws(Failure) {
        func checked<T>(_ body: () throws(VirtqueueError) -> T) throws(Failure) -> T {
            do { return try body() } catch { throw .queue(error) }
        }
        var queue = state.queue
        defer { state.queue = queue }
        func nextChain() throws(Failure) -> DescriptorChain? {
            try checked { () throws(VirtqueueError) in try queue.popChain() }
        }
        while true {
            var throttled = false
            requests: while true {
                let chain: DescriptorChain
                if let deferred = state.deferred {
                    state.deferred = nil
                    chain = deferred
                } else if let popped = try nextChain() {
                    chain = popped
                } else {
                    break requests
                }
                let bytes = min(chain.writableLength, UInt64(VirtioRNG.maximumBytesPerRequest))
                if !state.limiter.isUnlimited, !state.limiter.consume(operationOf: bytes) {
                    // Out of tokens: keep the request; the limiter's timer resumes the queue.
                    state.deferred = chain
                    throttled = true
                    break requests
                }
                let written = try fill(chain)
                try checked { () throws(VirtqueueError) in try queue.addUsed(head: chain.head, writtenLength: written) }
                counters.requests.wrappingAdd(1, ordering: .relaxed)
                counters.bytesToGuest.wrappingAdd(UInt64(written), ordering: .relaxed)
            }
            if try checked({ () throws(VirtqueueError) in try queue.shouldInterrupt() }) {
                interrupt.signalUsedBuffers(queue: index)
            }
            if throttled { return }
            if try !checked({ () throws(VirtqueueError) in try queue.enableNotifications() }) { return }
        }
    }

    /// Writes random bytes into the chain's writable buffers (up to the
    /// per-request limit); returns how many.
    private func fill(_ chain: DescriptorChain) throws(Failure) -> UInt32 {
        var writer = ChainWriter(memory: memory, buffers: chain.writable)
        var chunk = [UInt8](repeating: 0, count: 4096)
        var left = Int(min(writer.remaining, UInt64(VirtioRNG.maximumBytesPerRequest)))
        while left > 0 {
            let wanted = min(left, chunk.count)
            // SAFETY: the buffer pointer is used only within this call, for at most `wanted` ≤ chunk.count bytes.
            let got = try chunk.withUnsafeMutableBytes { raw in
                Result { () throws(SystemCallError) -> Int in try source(UnsafeMutableRawBufferPointer(rebasing: raw[0..<wanted])) }
            }.mapError { Failure.host($0) }.get()
            guard got > 0 else { break }
            do {
                try writer.write(bytes: Array(chunk[0..<got]))
            } catch {
                throw .memory(error)
            }
            left -= got
        }
        return writer.written
    }
}
