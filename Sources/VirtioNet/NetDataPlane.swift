import Glibc
import GuestMemory
import HostSystem
import RateLimiter
import Synchronization
import Virtio

/// The indices the worker reports its descriptors by.
enum NetToken {
    static let receiveNotification = 0
    static let transmitNotification = 1
    static let tap = 2
    static let receiveTimer = 3
    static let transmitTimer = 4
    static let update = 5
    /// The control queue's notification (pair 0's worker, multiqueue only).
    static let control = 6
}

/// What one batch moved, added to the shared atomic counters once per batch
/// rather than per frame (three locked adds per frame were a measurable share
/// of the worker's time).
struct NetTally {
    var frames: UInt64 = 0
    var chains: UInt64 = 0
    var bytes: UInt64 = 0

    mutating func flush(frames frameCounter: borrowing Atomic<UInt64>, chains chainCounter: borrowing Atomic<UInt64>,
                        bytes byteCounter: borrowing Atomic<UInt64>) {
        if frames > 0 { frameCounter.wrappingAdd(frames, ordering: .relaxed) }
        if chains > 0 { chainCounter.wrappingAdd(chains, ordering: .relaxed) }
        if bytes > 0 { byteCounter.wrappingAdd(bytes, ordering: .relaxed) }
        self = NetTally()
    }
}

/// The queue pairs of one activation, shared by their workers: how many the
/// driver enabled (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; 1 until it says), and
/// what wakes each pair's worker when that changes.
final class NetPairs: Sendable {
    let maximum: Int
    let active = Atomic<Int>(1)
    let wakers: [EventFD]

    init(maximum: Int, wakers: [EventFD]) {
        self.maximum = maximum
        self.wakers = wakers
    }
}

/// The device's queues and tap, served from one worker thread: TX chains are
/// written to the tap, frames read from the tap go into RX chains.
///
/// Receive never busy-waits: when the driver has no RX buffers left the tap
/// is dropped from the worker's epoll set and notifications are enabled on
/// the RX queue; the driver's next notification brings the tap back.
///
/// Rate limiters (Firecracker's rx/tx_rate_limiter): a TX chain the limiter
/// refuses is kept and the queue stops until the limiter's timer fires. A
/// received frame is charged once it has been read (its length is known only
/// then): refused, it stays where it was read (the RX chains or the bounce
/// buffer) and the tap leaves the epoll set, so further frames wait in the
/// kernel's tap queue until the timer fires.
struct NetDataPlane {
    /// Pair i receives on queue 2i and transmits on queue 2i+1 (5.1.2).
    let pair: Int
    var receiveQueueIndex: Int { 2 * pair }
    var transmitQueueIndex: Int { 2 * pair + 1 }
    /// Shared with the other pairs' workers; nil with a single pair.
    let pairs: NetPairs?
    /// The control queue (pair 0 of a multiqueue device only).
    var controlQueue: Virtqueue?
    let controlNotification: EventFD?
    let controlQueueIndex: Int?
    /// Frames received per wake-up before TX gets a turn (the tap stays
    /// readable, so epoll brings the worker straight back).
    static let receiveBudget = 64

    let memory: GuestMemory
    let features: UInt64
    let tap: any TapBackend
    let interrupt: any VirtioInterrupt
    let counters: VirtioCounters
    let netCounters: VirtioNetCounters
    let link: LinkStatus
    var receiveQueue: Virtqueue?
    var transmitQueue: Virtqueue?
    let receiveNotification: EventFD?
    let transmitNotification: EventFD?
    /// Set once the worker exists; nil when run without one (fuzzing).
    var worker: VirtioWorker?
    /// Polled in place of a queue the driver did not enable; never signalled.
    var placeholder: EventFD?
    var tapWatched = true
    /// Held for a snapshot: wake-ups are taken, nothing is served.
    var suspended = false
    /// Whether the tap was watched when the hold began (restored after it).
    var tapWatchedBeforeSuspend = true
    /// A queue broke the protocol: the device serves nothing until reset.
    var broken = false

    /// VIRTIO_NET_F_MRG_RXBUF: one frame may span several RX chains.
    let mergeable: Bool
    /// The header plus the largest frame the driver may be handed: with this
    /// much room in hand the tap reads straight into guest buffers.
    let directThreshold: UInt64
    /// RX chains taken from the ring and not used yet, in ring order.
    var spare: [DescriptorChain] = []
    /// Chains whose frames were delivered, kept so the next ones reuse
    /// their buffer arrays (no allocation per frame).
    var recycledChains: [DescriptorChain] = []
    static let recycledChainLimit = 16
    var spareRoom: UInt64 = 0
    /// Frames that did not fit the chains in hand are read here, then copied.
    var bounce: [UInt8]
    /// Length of a frame in `bounce` waiting for RX buffers.
    var pendingLength: Int?
    /// The frame in `bounce` has not been paid for yet (the RX limiter refused it).
    var pendingUnpaid = false
    /// Length of a frame already read into the spare RX chains whose tokens
    /// the RX limiter refused: committed once they are there.
    var heldLength: Int?

    var receiveLimiter: RateLimiter
    var transmitLimiter: RateLimiter
    /// A TX chain the limiter refused, sent before any other.
    var deferredTransmit: DescriptorChain?
    /// The TX chain being sent, refilled in place for each frame.
    var transmitChain = DescriptorChain()
    /// Frames delivered since processReceive began (flushed when it ends).
    var receiveTally = NetTally()
    /// Where runtime limiter updates come from, and what wakes the worker for them.
    let settings: NetLimiterSettings?
    var updateEvent: EventFD?

    init(activation: VirtioActivation, tap: any TapBackend, counters: VirtioCounters, netCounters: VirtioNetCounters, link: LinkStatus,
         receiveLimiter: RateLimiter = RateLimiter(.unlimited, timer: nil), transmitLimiter: RateLimiter = RateLimiter(.unlimited, timer: nil),
         settings: NetLimiterSettings? = nil, pair: Int = 0, pairs: NetPairs? = nil, controlQueueIndex: Int? = nil) {
        self.pair = pair
        self.pairs = pairs
        let control = controlQueueIndex.flatMap { index in activation.queues.first { $0.index == index } }
        self.controlQueueIndex = controlQueueIndex
        controlQueue = control?.queue
        controlNotification = control?.notification
        self.receiveLimiter = receiveLimiter
        self.transmitLimiter = transmitLimiter
        self.settings = settings
        memory = activation.memory
        features = activation.features
        self.tap = tap
        interrupt = activation.interrupt
        self.counters = counters
        self.netCounters = netCounters
        self.link = link
        let receive = activation.queues.first { $0.index == 2 * pair }
        let transmit = activation.queues.first { $0.index == 2 * pair + 1 }
        receiveQueue = receive?.queue
        transmitQueue = transmit?.queue
        receiveNotification = receive?.notification
        transmitNotification = transmit?.notification
        mergeable = features & VirtioNetFeature.mergeableReceiveBuffers != 0
        let largestFrame = features & VirtioNetFeature.guestSegmentation != 0
            ? VirtioNetFrame.maximumLength : VirtioNetFrame.maximumUnsegmentedLength
        directThreshold = UInt64(VirtioNetHeader.size + largestFrame)
        // One byte more than the largest frame, so an oversized one shows as truncated.
        bounce = [UInt8](repeating: 0, count: VirtioNetHeader.size + VirtioNetFrame.maximumLength + 1)
    }

    /// The descriptors the worker polls, by `NetToken` index.
    var pollDescriptors: [Int32] {
        let idle = placeholder?.descriptor.rawValue ?? -1
        func polled(_ descriptor: Int32) -> Int32 { descriptor >= 0 ? descriptor : idle }
        var descriptors = [receiveNotification?.descriptor.rawValue ?? idle, transmitNotification?.descriptor.rawValue ?? idle, tap.descriptor,
                           polled(receiveLimiter.descriptor), polled(transmitLimiter.descriptor), updateEvent?.descriptor.rawValue ?? idle]
        if let controlNotification { descriptors.append(controlNotification.descriptor.rawValue) }
        return descriptors
    }

    /// Whether the driver enabled this pair (pair 0 always is).
    var isActive: Bool { Self.isActive(pair: pair, of: pairs) }

    // Static, as is `consume`: a non-mutating method called from a mutating
    // one made the optimizer copy the whole plane (dozens of retains) per wake-up.
    static func isActive(pair: Int, of pairs: NetPairs?) -> Bool {
        guard let pairs else { return true }
        return pair < pairs.active.load(ordering: .acquiring)
    }

    // MARK: Events

    mutating func handle(_ ready: [Int]) {
        netCounters.wakeups.wrappingAdd(1, ordering: .relaxed)
        guard !broken else { return }
        let active = Self.isActive(pair: pair, of: pairs)
        if pairs != nil, !suspended {
            // An inactive pair's tap queue is detached: the host steers its
            // flows to the enabled queues rather than to one nobody reads.
            do {
                try tap.setQueueAttached(active)
            } catch {
                netCounters.receiveErrors.wrappingAdd(1, ordering: .relaxed)
            }
        }
        if suspended || !active {
            // An inactive pair (beyond what the driver enabled) serves
            // nothing and leaves its tap queue unread until enabled again.
            if !suspended { setTapWatched(false) }
            // Take what woke us, or the level-triggered poll would spin; serve nothing.
            for token in ready {
                switch token {
                case NetToken.receiveNotification: Self.consume(receiveNotification, counters: counters)
                case NetToken.transmitNotification: Self.consume(transmitNotification, counters: counters)
                case NetToken.receiveTimer: _ = receiveLimiter.timerFired()
                case NetToken.transmitTimer: _ = transmitLimiter.timerFired()
                case NetToken.update: _ = try? updateEvent?.consume()
                case NetToken.control: Self.consume(controlNotification, counters: counters)
                default: break
                }
            }
            return
        }
        var receive = false
        do throws(VirtqueueError) {
            for token in ready {
                switch token {
                case NetToken.receiveNotification:
                    Self.consume(receiveNotification, counters: counters)
                    receive = true
                case NetToken.transmitNotification:
                    Self.consume(transmitNotification, counters: counters)
                    try processTransmit()
                case NetToken.tap:
                    receive = true
                case NetToken.receiveTimer:
                    if receiveLimiter.timerFired() { receive = true }
                case NetToken.transmitTimer:
                    if transmitLimiter.timerFired() { try processTransmit() }
                case NetToken.update:
                    _ = try? updateEvent?.consume()
                    applyUpdates()
                    try processTransmit()
                    // After a snapshot hold, control requests whose notification
                    // the held worker consumed are waiting too.
                    try processControl()
                    receive = true
                case NetToken.control:
                    Self.consume(controlNotification, counters: counters)
                    try processControl()
                default:
                    break
                }
            }
            if receive { try processReceive() }
        } catch {
            markBroken(error)
        }
    }

    /// Applies limiter updates the API made since the last look.
    mutating func applyUpdates() {
        guard let (receive, transmit) = settings?.takePending() else { return }
        receiveLimiter.update(receive)
        transmitLimiter.update(transmit)
    }

    func consume(_ notification: EventFD?) {
        Self.consume(notification, counters: counters)
    }

    static func consume(_ notification: EventFD?, counters: VirtioCounters) {
        if let count = try? notification?.consume() {
            counters.notifications.wrappingAdd(count, ordering: .relaxed)
        }
    }

    func signal(queue index: Int) {
        interrupt.signalUsedBuffers(queue: index)
    }

    /// The driver broke a queue: report it once and stop serving until reset.
    mutating func markBroken(_ error: VirtqueueError) {
        markBroken(reason: "\(error)")
    }

    mutating func markBroken(reason: String) {
        broken = true
        interrupt.reportDeviceError("virtio-net (\(tap.label)): \(reason)")
        deferredTransmit = nil
        if let worker {
            let descriptors = pollDescriptors
            for index in [NetToken.receiveNotification, NetToken.transmitNotification, NetToken.receiveTimer, NetToken.transmitTimer, NetToken.update,
                          NetToken.control]
            where index < descriptors.count && descriptors[index] >= 0 {
                worker.setWatching(descriptors[index], index: index, false)
            }
            if tapWatched { worker.setWatching(tap.descriptor, index: NetToken.tap, false) }
        }
        tapWatched = false
    }

    mutating func setTapWatched(_ watched: Bool) {
        guard watched != tapWatched else { return }
        tapWatched = watched
        worker?.setWatching(tap.descriptor, index: NetToken.tap, watched)
    }

    // MARK: Transmit

    mutating func processTransmit() throws(VirtqueueError) {
        guard var queue = transmitQueue, !broken else { return }
        guard !transmitLimiter.isBlocked else {
            netCounters.transmitThrottled.wrappingAdd(1, ordering: .relaxed)
            return
        }
        var tally = NetTally()
        defer {
            transmitQueue = queue
            tally.flush(frames: netCounters.framesTransmitted, chains: counters.requests, bytes: counters.bytesFromGuest)
        }
        try queue.disableNotifications()
        while true {
            var throttled = false
            while try nextTransmit(&queue) {
                // Charged whole chains, vnet header included, as Firecracker does.
                if !transmitLimiter.isUnlimited, !transmitLimiter.consume(operationOf: transmitChain.readableLength) {
                    deferredTransmit = transmitChain
                    throttled = true
                    netCounters.transmitThrottled.wrappingAdd(1, ordering: .relaxed)
                    break
                }
                if transmit(transmitChain) {
                    tally.frames += 1
                    tally.bytes += transmitChain.readableLength
                }
                try queue.addUsed(head: transmitChain.head, writtenLength: 0)
                tally.chains += 1
            }
            // One interrupt decision per drained batch.
            if try queue.shouldInterrupt() { signal(queue: transmitQueueIndex) }
            // Throttled: notifications stay off; the limiter's timer brings us back.
            if throttled { break }
            if try !queue.enableNotifications() { break }
        }
    }

    /// Puts the deferred TX chain, else the next available one, in
    /// `transmitChain`; false when there is neither.
    mutating func nextTransmit(_ queue: inout Virtqueue) throws(VirtqueueError) -> Bool {
        if let chain = deferredTransmit {
            deferredTransmit = nil
            transmitChain = chain
            return true
        }
        return try queue.popChain(into: &transmitChain)
    }

    /// Writes one TX chain to the tap (true), or counts it as malformed or
    /// failed and drops it.
    func transmit(_ chain: DescriptorChain) -> Bool {
        let header: VirtioNetHeader
        switch VirtioNetFrame.parseTransmit(chain: chain, memory: memory, features: features) {
        case let .success(parsed): header = parsed
        case .failure:
            netCounters.transmitMalformed.wrappingAdd(1, ordering: .relaxed)
            return false
        }
        var wire = header.wire
        // SAFETY: the 12 header bytes are used only inside this call, by writev.
        let outcome = withUnsafeMutableBytes(of: &wire) { raw in
            Result { () throws(GuestMemoryError) in
                // The cleaned header replaces the driver's; the frame follows it in the chain.
                try withIOVectors(memory: memory, prefix: raw, buffers: chain.readable, skipping: UInt64(VirtioNetHeader.size)) { vectors in
                    Result { () throws(SystemCallError) in try tap.send(vectors) }
                }
            }
        }
        switch outcome {
        case .success(.success):
            return true
        case .success(.failure):
            netCounters.transmitErrors.wrappingAdd(1, ordering: .relaxed)
            counters.errors.wrappingAdd(1, ordering: .relaxed)
        case .failure:
            // The chain was validated against guest RAM, so this is not expected.
            netCounters.transmitMalformed.wrappingAdd(1, ordering: .relaxed)
        }
        return false
    }

    // MARK: Receive

    enum ReceiveOutcome { case tapEmpty, budgetSpent, outOfBuffers, tapFailed, throttled }
    enum FrameOutcome { case delivered, dropped, pending, tapEmpty, tapFailed, noBuffers, throttled }

    mutating func processReceive() throws(VirtqueueError) {
        guard var queue = receiveQueue else {
            // No RX queue: nowhere to put frames; stop polling so a readable tap cannot spin.
            setTapWatched(false)
            return
        }
        guard !receiveLimiter.isBlocked else {
            // Frames wait in the tap (the kernel queues them) until the timer fires.
            netCounters.receiveThrottled.wrappingAdd(1, ordering: .relaxed)
            setTapWatched(false)
            return
        }
        defer {
            receiveQueue = queue
            receiveTally.flush(frames: netCounters.framesReceived, chains: counters.requests, bytes: counters.bytesToGuest)
        }
        var delivered = 0
        var outcome = ReceiveOutcome.budgetSpent
        receiving: for _ in 0..<Self.receiveBudget {
            let step: FrameOutcome
            if let length = heldLength {
                step = try deliverHeld(&queue, length: length)
            } else if pendingLength == nil {
                step = try readFrame(&queue)
            } else {
                step = try deliverPending(&queue)
            }
            switch step {
            case .delivered: delivered += 1
            case .dropped, .pending: continue
            case .throttled:
                outcome = .throttled
                break receiving
            case .tapEmpty:
                outcome = .tapEmpty
                break receiving
            case .tapFailed:
                outcome = .tapFailed
                break receiving
            case .noBuffers:
                // Ask for a notification, then look once more: buffers the
                // driver added meanwhile would otherwise go unnoticed.
                if try queue.enableNotifications() { continue }
                outcome = .outOfBuffers
                break receiving
            }
        }
        if delivered > 0, try queue.shouldInterrupt() { signal(queue: receiveQueueIndex) }
        switch outcome {
        case .outOfBuffers:
            if tapWatched { netCounters.receiveStalls.wrappingAdd(1, ordering: .relaxed) }
            setTapWatched(false)
        case .tapEmpty, .budgetSpent:
            if !tapWatched {
                setTapWatched(true)
                try queue.disableNotifications()
            }
        case .throttled:
            netCounters.receiveThrottled.wrappingAdd(1, ordering: .relaxed)
            setTapWatched(false)
        case .tapFailed:
            break
        }
    }

    /// The RX limiter's tokens for a frame of `length` bytes (vnet header
    /// included, as Firecracker counts); true when unlimited.
    mutating func payForReceive(_ length: Int) -> Bool {
        receiveLimiter.isUnlimited || receiveLimiter.consume(operationOf: UInt64(length))
    }

    /// Commits the frame held in the spare chains once its tokens are there.
    mutating func deliverHeld(_ queue: inout Virtqueue, length: Int) throws(VirtqueueError) -> FrameOutcome {
        guard payForReceive(length) else { return .throttled }
        heldLength = nil
        try commit(&queue, length: length, fromBounce: false)
        return .delivered
    }

    /// Reads the next frame from the tap: straight into RX chains when they
    /// have room for the largest frame, else into `bounce` (pending).
    mutating func readFrame(_ queue: inout Virtqueue) throws(VirtqueueError) -> FrameOutcome {
        try refillSpare(&queue, target: directThreshold)
        if let chainCount = directChainCount() {
            let buffers = chainCount == 1 ? spare[0].writable : spare[..<chainCount].flatMap(\.writable)
            let room = spare[..<chainCount].reduce(0) { $0 + $1.writableLength }
            let result = Result { () throws(GuestMemoryError) in
                try withIOVectors(memory: memory, buffers: buffers) { vectors in
                    Result { () throws(SystemCallError) in try tap.receive(into: vectors) }
                }
            }
            switch result {
            case .failure:
                // The chains were validated against guest RAM, so this is not expected.
                netCounters.receiveErrors.wrappingAdd(1, ordering: .relaxed)
                return .tapEmpty
            case let .success(.failure(error)):
                return tapReadFailed(error)
            case let .success(.success(length)):
                if length == 0 { return tapReadFailed(nil) }
                guard length >= VirtioNetHeader.size + VirtioNetFrame.minimumLength, UInt64(length) <= room else {
                    netCounters.receiveDropped.wrappingAdd(1, ordering: .relaxed)
                    return .dropped
                }
                guard payForReceive(length) else {
                    heldLength = length
                    return .throttled
                }
                try commit(&queue, length: length, fromBounce: false)
                return .delivered
            }
        }
        let backend = tap
        let result = bounce.withUnsafeMutableBytes { raw in
            Result { () throws(SystemCallError) -> Int in
                var vector = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
                // SAFETY: one iovec over `bounce`, alive for the call.
                return try withUnsafePointer(to: &vector) { (pointer) throws(SystemCallError) -> Int in
                    try backend.receive(into: UnsafeBufferPointer(start: pointer, count: 1))
                }
            }
        }
        switch result {
        case let .failure(error):
            return tapReadFailed(error)
        case let .success(length):
            if length == 0 { return tapReadFailed(nil) }
            guard length >= VirtioNetHeader.size + VirtioNetFrame.minimumLength,
                  length <= VirtioNetHeader.size + VirtioNetFrame.maximumLength else {
                netCounters.receiveDropped.wrappingAdd(1, ordering: .relaxed)
                return .dropped
            }
            pendingLength = length
            pendingUnpaid = true
            return try deliverPending(&queue)
        }
    }

    /// EAGAIN is "nothing to read"; anything else (or end of file) means the
    /// tap is gone: stop polling it and report the link down.
    mutating func tapReadFailed(_ error: SystemCallError?) -> FrameOutcome {
        if let error, error.errno == .wouldBlock { return .tapEmpty }
        netCounters.receiveErrors.wrappingAdd(1, ordering: .relaxed)
        setTapWatched(false)
        if link.up.exchange(false, ordering: .relaxed) {
            interrupt.signalConfigurationChange()
        }
        return .tapFailed
    }

    /// How many spare chains (from the first) hold the largest frame, or nil
    /// if they do not: without MRG_RXBUF only the first chain counts.
    func directChainCount() -> Int? {
        guard !spare.isEmpty else { return nil }
        guard mergeable else { return spare[0].writableLength >= directThreshold ? 1 : nil }
        var room: UInt64 = 0
        var buffers = 0
        for (index, chain) in spare.enumerated() {
            buffers += chain.writable.count
            guard buffers <= maximumIOVectors else { return nil }
            room += chain.writableLength
            if room >= directThreshold { return index + 1 }
        }
        return nil
    }

    /// Takes RX chains from the ring until `target` bytes of room are in hand
    /// or the ring is empty. Chains with no room for a header (or with
    /// readable buffers) go straight back, empty.
    mutating func refillSpare(_ queue: inout Virtqueue, target: UInt64) throws(VirtqueueError) {
        var chain = recycledChains.popLast() ?? DescriptorChain()
        while spareRoom < target, try queue.popChain(into: &chain) {
            guard chain.readable.isEmpty, chain.writableLength >= UInt64(VirtioNetHeader.size) else {
                netCounters.receiveChainsRefused.wrappingAdd(1, ordering: .relaxed)
                try queue.addUsed(head: chain.head, writtenLength: 0)
                continue
            }
            spareRoom += chain.writableLength
            spare.append(chain)
            chain = recycledChains.popLast() ?? DescriptorChain()
        }
        recycle(chain)
    }

    /// Sets num_buffers in a chain whose header spans buffers.
    func writeBufferCount(_ count: UInt16, chain: DescriptorChain) throws(VirtqueueError) {
        var writer = ChainWriter(memory: memory, buffers: chain.writable)
        writer.advance(by: UInt64(VirtioNetHeader.bufferCountOffset))
        var value = count.littleEndian
        do {
            // SAFETY: the two bytes of `value` are read only within this call.
            try withUnsafeBytes(of: &value) { raw throws(GuestMemoryError) in _ = try writer.write(raw) }
        } catch {
            throw .memory(error)
        }
    }

    /// Keeps a used chain's storage for the next one (up to a few chains).
    mutating func recycle(_ chain: consuming DescriptorChain) {
        if recycledChains.count < Self.recycledChainLimit { recycledChains.append(chain) }
    }

    /// Hands the frame in `bounce` to the driver, if it has the room.
    mutating func deliverPending(_ queue: inout Virtqueue) throws(VirtqueueError) -> FrameOutcome {
        guard let length = pendingLength else { return .dropped }
        if pendingUnpaid {
            guard payForReceive(length) else { return .throttled }
            pendingUnpaid = false
        }
        if mergeable {
            try refillSpare(&queue, target: UInt64(length))
            guard spareRoom >= UInt64(length) else { return .noBuffers }
        } else {
            try refillSpare(&queue, target: 1)
            guard let chain = spare.first else { return .noBuffers }
            guard chain.writableLength >= UInt64(length) else {
                // The driver's buffers are smaller than the frame: drop it, keep them.
                pendingLength = nil
                netCounters.receiveDropped.wrappingAdd(1, ordering: .relaxed)
                return .dropped
            }
        }
        pendingLength = nil
        try commit(&queue, length: length, fromBounce: true)
        return .delivered
    }

    /// Returns the spare chains a frame of `length` bytes (header included)
    /// fills to the driver, setting num_buffers. The frame is already in the
    /// chains (direct read) or is copied from `bounce`.
    mutating func commit(_ queue: inout Virtqueue, length: Int, fromBounce: Bool) throws(VirtqueueError) {
        // How many spare chains the frame fills (only the first without
        // MRG_RXBUF); each but the last is filled whole.
        var chainCount = 0
        var left = UInt64(length)
        while left > 0, chainCount < spare.count {
            left -= min(left, spare[chainCount].writableLength)
            chainCount += 1
            if !mergeable { break }
        }
        let bufferCount = UInt16(clamping: chainCount)
        if fromBounce {
            bounce[VirtioNetHeader.bufferCountOffset] = UInt8(truncatingIfNeeded: bufferCount)
            bounce[VirtioNetHeader.bufferCountOffset + 1] = UInt8(truncatingIfNeeded: bufferCount >> 8)
            let memory = memory
            let spare = spare
            // SAFETY: the slices stay inside `bounce` (they sum to length <= bounce.count).
            let copied = bounce.withUnsafeBytes { frame in
                Result { () throws(GuestMemoryError) in
                    var offset = 0
                    for index in 0..<chainCount {
                        let size = min(length - offset, Int(spare[index].writableLength))
                        var writer = ChainWriter(memory: memory, buffers: spare[index].writable)
                        try writer.write(UnsafeRawBufferPointer(rebasing: frame[offset..<(offset + size)]))
                        offset += size
                    }
                }
            }
            if case let .failure(error) = copied { throw .memory(error) }
        } else {
            // The tap leaves num_buffers alone: set it in the first chain
            // (straight into its first buffer when the header fits there).
            let first = spare[0].writable[0]
            if first.length >= UInt32(VirtioNetHeader.size) {
                do {
                    try memory.write(bufferCount.littleEndian, at: first.address + UInt64(VirtioNetHeader.bufferCountOffset))
                } catch {
                    throw .memory(error)
                }
            } else {
                try writeBufferCount(bufferCount, chain: spare[0])
            }
        }
        var offset = 0
        for index in 0..<chainCount {
            let room = spare[index].writableLength
            let size = min(UInt64(length - offset), room)
            try queue.addUsed(head: spare[index].head, writtenLength: UInt32(size))
            offset += Int(size)
            spareRoom -= room
        }
        for _ in 0..<chainCount { recycle(spare.removeFirst()) }
        receiveTally.frames += 1
        receiveTally.chains += UInt64(chainCount)
        receiveTally.bytes += UInt64(length)
    }
}
