import GuestMemory
import HostSystem
import RateLimiter
import Synchronization
import Virtio

/// A virtio-net device (VirtIO 1.2 section 5.1) on a tap: queue 0 receives,
/// queue 1 transmits, both served by one worker thread.
public final class VirtioNetDevice: VirtioDevice {
    public static let queueSize: UInt16 = 256
    /// Offloads offered unless disabled: checksums and TSO both ways.
    public static let offloadFeatures = VirtioNetFeature.checksum | VirtioNetFeature.guestChecksum
        | VirtioNetFeature.guestTSO4 | VirtioNetFeature.guestTSO6 | VirtioNetFeature.guestECN
        | VirtioNetFeature.hostTSO4 | VirtioNetFeature.hostTSO6 | VirtioNetFeature.hostECN

    public let deviceType = VirtioDeviceType.network
    public let queueMaximumSizes = [VirtioNetDevice.queueSize, VirtioNetDevice.queueSize]
    public let offeredFeatures: UInt64
    public let mac: MACAddress
    public let tap: any TapBackend
    public let counters = VirtioCounters()
    public let netCounters = VirtioNetCounters()
    /// Reported in the status field; goes down if the tap fails.
    let link = LinkStatus()
    let active = Mutex<NetWorker?>(nil)
    /// The rate limiters' configuration and the updates the worker has not applied.
    let limiterSettings: NetLimiterSettings
    /// The clock rate limiters read; injectable for tests.
    let clock: any RateLimiterClock

    /// `offloads: false` offers no checksum or segmentation offload (every
    /// frame is at most MTU-sized and fully checksummed). The rate limiters
    /// bound what the guest receives and transmits (Firecracker's
    /// rx_rate_limiter and tx_rate_limiter).
    public init(tap: any TapBackend, mac: MACAddress, offloads: Bool = true,
                receiveRateLimiter: RateLimiterConfiguration = .unlimited, transmitRateLimiter: RateLimiterConfiguration = .unlimited,
                clock: any RateLimiterClock = MonotonicClock()) {
        self.tap = tap
        self.mac = mac
        limiterSettings = NetLimiterSettings(receive: receiveRateLimiter, transmit: transmitRateLimiter)
        self.clock = clock
        offeredFeatures = VirtioNetFeature.mac | VirtioNetFeature.status | VirtioNetFeature.mergeableReceiveBuffers
            | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
            | (offloads ? Self.offloadFeatures : 0)
    }

    deinit {
        reset()
    }

    // MARK: Configuration space (5.1.4)

    /// mac[6], status (le16), max_virtqueue_pairs (le16).
    var configurationBytes: [UInt8] {
        let status: UInt16 = link.up.load(ordering: .relaxed) ? 1 : 0  // VIRTIO_NET_S_LINK_UP
        return mac.octets + [UInt8(status), 0, 1, 0]
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
        reset()
        do {
            try tap.setOffloads(VirtioNetFrame.tapOffloads(features: activation.features))
        } catch {
            throw .activation(device: "virtio-net", step: "setting tap offloads", cause: "\(error)")
        }
        let receiveTimer: MonotonicTimer, transmitTimer: MonotonicTimer, updateEvent: EventFD
        do {
            receiveTimer = try MonotonicTimer()
            transmitTimer = try MonotonicTimer()
            updateEvent = try EventFD()
        } catch {
            throw .activation(device: "virtio-net", step: "creating the rate-limiter timerfds and update eventfd", cause: "\(error)")
        }
        // Under `active`'s lock: an update either lands before the settings
        // are read here or signals this worker.
        let failure = active.withLock { (active) -> VirtioDeviceError? in
            let (receive, transmit) = limiterSettings.startFresh()
            var plane = NetDataPlane(activation: activation, tap: tap, counters: counters, netCounters: netCounters, link: link,
                                     receiveLimiter: RateLimiter(receive, clock: clock, timer: receiveTimer),
                                     transmitLimiter: RateLimiter(transmit, clock: clock, timer: transmitTimer),
                                     settings: limiterSettings)
            plane.updateEvent = updateEvent
            // Until the RX ring runs dry the device finds buffers by looking;
            // notifications are asked for only then.
            _ = try? plane.receiveQueue?.disableNotifications()
            let worker = NetWorker(plane: plane)
            do {
                try worker.start(name: "virtio-net")
            } catch {
                return .activation(device: "virtio-net", step: "starting the worker thread", cause: "\(error)")
            }
            active = worker
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
            limiterSettings.record(receive: receive, transmit: transmit, pending: active != nil)
            try? active?.updateEvent?.signal()
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
        let worker = active.withLock { (current: inout NetWorker?) -> NetWorker? in
            let worker = current
            current = nil
            return worker
        }
        worker?.stop()
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
