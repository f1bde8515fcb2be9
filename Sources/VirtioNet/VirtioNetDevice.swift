import GuestMemory
import HostSystem
import RateLimiter
import Synchronization
import Virtio

/// A virtio-net device (VirtIO 1.2 section 5.1) on a tap: queue 0 receives,
/// queue 1 transmits, both served by one worker thread. With N > 1 queue
/// pairs (VIRTIO_NET_F_MQ) pair i uses queues 2i and 2i+1, its own tap queue
/// (IFF_MULTI_QUEUE) and its own worker; queue 2N is the control queue.
public final class VirtioNetDevice: VirtioDevice {
    public static let queueSize: UInt16 = 256
    /// Offloads offered unless disabled: checksums and TSO both ways.
    public static let offloadFeatures = VirtioNetFeature.checksum | VirtioNetFeature.guestChecksum
        | VirtioNetFeature.guestTSO4 | VirtioNetFeature.guestTSO6 | VirtioNetFeature.guestECN
        | VirtioNetFeature.hostTSO4 | VirtioNetFeature.hostTSO6 | VirtioNetFeature.hostECN

    public let deviceType = VirtioDeviceType.network
    /// The most queue pairs a device offers.
    public static let maximumQueuePairs = 16
    /// VIRTIO_NET_F_MTU's range (68 is IPv4's minimum).
    public static let mtuRange: ClosedRange<Int> = 68...65535
    public static let controlQueueSize: UInt16 = 64
    public let queueMaximumSizes: [UInt16]
    public let offeredFeatures: UInt64
    public let mac: MACAddress
    /// Pair 0's tap queue (the only one with a single pair).
    public let tap: any TapBackend
    /// One tap queue per queue pair, `tap` first.
    public let taps: [any TapBackend]
    /// max_virtqueue_pairs.
    public var queuePairs: Int { taps.count }
    /// Offered with VIRTIO_NET_F_MTU when set.
    public let mtu: UInt16?
    public let counters = VirtioCounters()
    public let netCounters = VirtioNetCounters()
    /// Reported in the status field; goes down if the tap fails.
    let link = LinkStatus()
    /// One worker per queue pair while active.
    let active = Mutex<[NetWorker]>([])
    /// The rate limiters' configuration and the updates the worker has not applied.
    let limiterSettings: NetLimiterSettings
    /// The same, one per pair (each pair's worker takes its own updates).
    let pairSettings: [NetLimiterSettings]
    /// The clock rate limiters read; injectable for tests.
    let clock: any RateLimiterClock
    /// The active pair count a snapshot restore brought back, for the
    /// activation the transport makes right after it (taken once; a reset
    /// forgets it, so a driver's own activation starts with one pair).
    let restoredActivePairs = Mutex<Int?>(nil)

    /// `offloads: false` offers no checksum or segmentation offload (every
    /// frame is at most MTU-sized and fully checksummed). The rate limiters
    /// bound what the guest receives and transmits (Firecracker's
    /// rx_rate_limiter and tx_rate_limiter); with several pairs each pair
    /// has its own. `additionalQueues` are the tap's other queues (one
    /// more pair each, at most 15): with any, VIRTIO_NET_F_MQ and
    /// VIRTIO_NET_F_CTRL_VQ are offered; without, the device is exactly the
    /// single-queue one. `mtu` (68...65535) offers VIRTIO_NET_F_MTU.
    public init(tap: any TapBackend, mac: MACAddress, offloads: Bool = true,
                receiveRateLimiter: RateLimiterConfiguration = .unlimited, transmitRateLimiter: RateLimiterConfiguration = .unlimited,
                additionalQueues: [any TapBackend] = [], mtu: UInt16? = nil,
                clock: any RateLimiterClock = MonotonicClock()) {
        self.tap = tap
        taps = [tap] + additionalQueues.prefix(Self.maximumQueuePairs - 1)
        self.mac = mac
        self.mtu = mtu
        pairSettings = taps.map { _ in NetLimiterSettings(receive: receiveRateLimiter, transmit: transmitRateLimiter) }
        limiterSettings = pairSettings[0]
        self.clock = clock
        let multiqueue = taps.count > 1
        queueMaximumSizes = [UInt16](repeating: Self.queueSize, count: 2 * taps.count) + (multiqueue ? [Self.controlQueueSize] : [])
        offeredFeatures = VirtioNetFeature.mac | VirtioNetFeature.status | VirtioNetFeature.mergeableReceiveBuffers
            | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
            | (offloads ? Self.offloadFeatures : 0)
            | (multiqueue ? VirtioNetFeature.controlQueue | VirtioNetFeature.multiqueue : 0)
            | (mtu != nil ? VirtioNetFeature.mtu : 0)
    }

    deinit {
        reset()
    }

    // MARK: Configuration space (5.1.4)

    /// mac[6], status (le16), max_virtqueue_pairs (le16), mtu (le16; 0
    /// without VIRTIO_NET_F_MTU, as any read past the fields gives).
    var configurationBytes: [UInt8] {
        let status: UInt16 = link.up.load(ordering: .relaxed) ? 1 : 0  // VIRTIO_NET_S_LINK_UP
        let pairs = UInt16(clamping: queuePairs), mtu = mtu ?? 0
        return mac.octets + [UInt8(status), 0, UInt8(truncatingIfNeeded: pairs), UInt8(truncatingIfNeeded: pairs >> 8),
                             UInt8(truncatingIfNeeded: mtu), UInt8(truncatingIfNeeded: mtu >> 8)]
    }

    public func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        let bytes = configurationBytes
        for index in 0..<data.count {
            let (position, overflow) = offset.addingReportingOverflow(UInt64(index))
            data[index] = !overflow && position < UInt64(bytes.count) ? bytes[Int(position)] : 0
        }
    }

    /// The driver may not write the configuration in VirtIO 1.x (the MAC is
    /// set through a control queue this device does not offer): ignored.
    public func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {}

    // MARK: Lifecycle

    public func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {
        let restoredActive = restoredActivePairs.withLock { (pending) -> Int? in
            defer { pending = nil }
            return pending
        }
        reset()
        for tap in taps {
            do {
                try tap.setOffloads(VirtioNetFrame.tapOffloads(features: activation.features))
            } catch {
                throw .activation(device: "virtio-net", step: "setting tap offloads", cause: "\(error)")
            }
        }
        var timers: [(receive: MonotonicTimer, transmit: MonotonicTimer, update: EventFD)] = []
        do {
            for _ in taps { timers.append((try MonotonicTimer(), try MonotonicTimer(), try EventFD())) }
        } catch {
            throw .activation(device: "virtio-net", step: "creating the rate-limiter timerfds and update eventfd", cause: "\(error)")
        }
        let multiqueue = taps.count > 1
        // Without VIRTIO_NET_F_MQ negotiated there is one pair, and the
        // control queue (if VIRTIO_NET_F_CTRL_VQ is) is queue 2. With it,
        // only pair 0 is used until the driver sets the number of pairs.
        let negotiatedPairs = activation.features & VirtioNetFeature.multiqueue != 0 ? taps.count : 1
        let controlIndex = activation.features & VirtioNetFeature.controlQueue != 0 ? 2 * negotiatedPairs : nil
        let pairs = negotiatedPairs > 1 ? NetPairs(maximum: negotiatedPairs, wakers: timers.prefix(negotiatedPairs).map(\.update)) : nil
        // A restored device goes on with the pairs the driver had enabled;
        // the workers below attach or detach their tap queues to match.
        if let pairs, let restoredActive, (1...pairs.maximum).contains(restoredActive) {
            pairs.active.store(restoredActive, ordering: .releasing)
        }
        // Under `active`'s lock: an update either lands before the settings
        // are read here or signals this worker.
        let failure = active.withLock { (active) -> VirtioDeviceError? in
            var started: [NetWorker] = []
            for (pair, tap) in taps.prefix(negotiatedPairs).enumerated() {
                let (receive, transmit) = pairSettings[pair].startFresh()
                var plane = NetDataPlane(activation: activation, tap: tap, counters: counters, netCounters: netCounters, link: link,
                                         receiveLimiter: RateLimiter(receive, clock: clock, timer: timers[pair].receive),
                                         transmitLimiter: RateLimiter(transmit, clock: clock, timer: timers[pair].transmit),
                                         settings: pairSettings[pair], pair: pair, pairs: pairs,
                                         controlQueueIndex: pair == 0 ? controlIndex : nil)
                plane.updateEvent = timers[pair].update
                // Until the RX ring runs dry the device finds buffers by looking;
                // notifications are asked for only then.
                _ = try? plane.receiveQueue?.disableNotifications()
                let worker = NetWorker(plane: plane)
                do {
                    try worker.start(name: multiqueue ? "virtio-net-q\(pair)" : "virtio-net")
                } catch {
                    for worker in started { worker.stop() }
                    return .activation(device: "virtio-net", step: "starting the worker thread", cause: "\(error)")
                }
                started.append(worker)
            }
            active = started
            // The other pairs' workers look at once, and detach their tap
            // queues until the driver enables their pairs (or attach them,
            // for pairs a restored driver had enabled).
            if pairs != nil {
                for worker in started.dropFirst() { try? worker.updateEvent?.signal() }
            }
            return nil
        }
        if let failure { throw failure }
    }

    /// The rate limiters' configuration, updates included.
    public var rateLimiters: (receive: RateLimiterConfiguration, transmit: RateLimiterConfiguration) {
        limiterSettings.configuration
    }

    /// Changes the rate limiters (Firecracker's PATCH semantics per bucket),
    /// running or not. A running worker applies the change between two
    /// frames; returns at once.
    public func updateRateLimiters(receive: RateLimiterUpdate, transmit: RateLimiterUpdate) {
        active.withLock { active in
            for settings in pairSettings {
                settings.record(receive: receive, transmit: transmit, pending: !active.isEmpty)
            }
            for worker in active { try? worker.updateEvent?.signal() }
        }
    }

    /// Runs the data plane on the calling thread, without a worker: each
    /// element of `events` is one wake-up with the `NetToken` indices ready
    /// (0 RX notification, 1 TX notification, 2 tap). For fuzzing.
    @_spi(Fuzzing)
    public func serveSynchronously(_ activation: VirtioActivation, events: [[Int]]) {
        var plane = NetDataPlane(activation: activation, tap: tap, counters: counters, netCounters: netCounters, link: link)
        for ready in events { plane.handle(ready) }
    }

    public func reset() {
        restoredActivePairs.withLock { $0 = nil }
        let workers = active.withLock { (current: inout [NetWorker]) -> [NetWorker] in
            let workers = current
            current = []
            return workers
        }
        for worker in workers { worker.stop() }
    }
}

/// The data plane behind a lock, and the thread that drives it. The lock is
/// uncontended (only the worker thread takes it while running); it makes the
/// hand-over at start and stop safe.
final class NetWorker: Sendable {
    let plane: Mutex<NetDataPlane>
    /// Wakes the worker to apply rate-limiter updates (the plane polls it too).
    let updateEvent: EventFD?

    init(plane: NetDataPlane) {
        updateEvent = plane.updateEvent
        self.plane = Mutex(plane)
    }

    func start(name: String) throws(SystemCallError) {
        // The thread's first event waits on the lock until the worker is stored.
        try plane.withLock { (plane) throws(SystemCallError) in
            if plane.receiveNotification == nil || plane.transmitNotification == nil {
                plane.placeholder = try EventFD()
            }
            plane.worker = try VirtioWorker(name: name, descriptors: plane.pollDescriptors) { [self] ready in
                self.plane.withLock { $0.handle(ready) }
            }
        }
    }

    /// Stops and joins the thread; breaks the worker <-> closure cycle.
    func stop() {
        let worker = plane.withLock { (plane) -> VirtioWorker? in
            let worker = plane.worker
            plane.worker = nil
            return worker
        }
        worker?.stop()
    }
}

/// The link state in the status field, shared with the worker.
final class LinkStatus: Sendable {
    let up = Atomic<Bool>(true)
}

/// What the API set for the rate limiters, and the updates a running worker
/// has not applied yet (merged, so they stay bounded).
final class NetLimiterSettings: Sendable {
    struct State {
        var receive: RateLimiterConfiguration
        var transmit: RateLimiterConfiguration
        var pendingReceive = RateLimiterUpdate.none
        var pendingTransmit = RateLimiterUpdate.none
    }
    let state: Mutex<State>

    init(receive: RateLimiterConfiguration, transmit: RateLimiterConfiguration) {
        state = Mutex(State(receive: receive, transmit: transmit))
    }

    var configuration: (receive: RateLimiterConfiguration, transmit: RateLimiterConfiguration) {
        state.withLock { ($0.receive, $0.transmit) }
    }

    func record(receive: RateLimiterUpdate, transmit: RateLimiterUpdate, pending: Bool) {
        state.withLock { state in
            state.receive = state.receive.applying(receive)
            state.transmit = state.transmit.applying(transmit)
            if pending {
                state.pendingReceive = state.pendingReceive.then(receive)
                state.pendingTransmit = state.pendingTransmit.then(transmit)
            }
        }
    }

    /// A new worker starts from the configuration; nothing is pending for it.
    func startFresh() -> (RateLimiterConfiguration, RateLimiterConfiguration) {
        state.withLock { state in
            state.pendingReceive = .none
            state.pendingTransmit = .none
            return (state.receive, state.transmit)
        }
    }

    func takePending() -> (RateLimiterUpdate, RateLimiterUpdate) {
        state.withLock { state in
            defer { state.pendingReceive = .none; state.pendingTransmit = .none }
            return (state.pendingReceive, state.pendingTransmit)
        }
    }
}
