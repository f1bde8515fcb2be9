import GuestMemory
import HostSystem
import Synchronization
import Virtio

/// virtio-vsock (VirtIO 1.2 section 5.10) with Firecracker's hybrid
/// backend: guest AF_VSOCK stream sockets meet host AF_UNIX sockets.
///
/// - A host process connects to the Unix socket at `uds_path`, writes
///   `CONNECT <port>\n`, and once the guest accepts on that port reads
///   `OK <host port>\n`; then bytes flow both ways.
/// - A guest connecting to CID 2 port P reaches the listener at
///   `<uds_path>_P` (RST if nothing listens there).
///
/// Queues: 0 RX, 1 TX, 2 event (the device sends no events). Stream
/// sockets only (no feature bits of its own). All work runs on one worker
/// thread per device, off the vCPU threads ([docs/vsock.md]).
public final class VirtioVsockDevice: VirtioDevice {
    public static let queueSize: UInt16 = 256

    public let deviceType = VirtioDeviceType.socket
    public let queueMaximumSizes = [VirtioVsockDevice.queueSize, VirtioVsockDevice.queueSize, VirtioVsockDevice.queueSize]
    public let offeredFeatures: UInt64 = VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
    public let guestCID: UInt64
    /// The socket at `uds_path`; nil only for fuzzing (no host side).
    let listener: VsockHostListener?
    public let counters = VirtioCounters()
    public let vsockCounters = VsockCounters()
    let limits: VsockMuxer.Limits
    let active = Mutex<VsockWorker?>(nil)
    /// The event queue (the muxer never uses it): where a restored device
    /// sends TRANSPORT_RESET, and whose walking state a snapshot keeps.
    let eventQueue = Mutex<(queue: VirtioQueueActivation, memory: GuestMemory)?>(nil)
    /// Set by a restore: the next activation tells the driver its connections are gone.
    let pendingTransportReset = Atomic<Bool>(false)

    /// `listener` is the bound socket at `uds_path` (`VsockHostListener.acquire`).
    public convenience init(guestCID: UInt64, listener: VsockHostListener) throws(VsockError) {
        try self.init(guestCID: guestCID, listener: listener, limits: VsockMuxer.Limits())
    }

    /// A device with no host side (every guest REQUEST gets RST), for fuzzing.
    @_spi(Fuzzing)
    public convenience init(fuzzingWithGuestCID guestCID: UInt64) throws(VsockError) {
        try self.init(guestCID: guestCID, listener: nil, limits: VsockMuxer.Limits())
    }

    /// Where host processes connect.
    public var udsPath: String? { listener?.path }

    init(guestCID: UInt64, listener: VsockHostListener?, limits: VsockMuxer.Limits) throws(VsockError) {
        guard (Vsock.minimumGuestCID...Vsock.maximumGuestCID).contains(guestCID) else { throw .invalidGuestCID(guestCID) }
        self.guestCID = guestCID
        self.listener = listener
        self.limits = limits
    }

    deinit {
        reset()
    }

    public var deviceCounters: [(name: String, value: UInt64)] { vsockCounters.snapshot }

    // MARK: Configuration space (5.10.4): le64 guest_cid

    public func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in 0..<data.count {
            let (position, overflow) = offset.addingReportingOverflow(UInt64(index))
            data[index] = !overflow && position < 8 ? UInt8(truncatingIfNeeded: guestCID >> (8 * position)) : 0
        }
    }

    /// The configuration is read-only for the driver.
    public func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {}

    // MARK: Lifecycle

    public func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {
        let announceReset = pendingTransportReset.exchange(false, ordering: .acquiringAndReleasing)
        reset()
        let muxer: VsockMuxer
        do {
            muxer = try VsockMuxer(guestCID: guestCID, activation: activation, listener: listener, counters: counters,
                                   vsockCounters: vsockCounters, limits: limits)
        } catch {
            throw .activation(device: "\(deviceType)", step: "setting up its epoll set", cause: "\(error)")
        }
        let worker: VsockWorker
        do {
            worker = try VsockWorker(muxer: muxer)
        } catch {
            throw .activation(device: "\(deviceType)", step: "starting its worker thread", cause: "\(error)")
        }
        active.withLock { $0 = worker }
        let event = activation.queues.first { $0.index == Vsock.eventQueue }
        eventQueue.withLock { $0 = event.map { ($0, activation.memory) } }
        if announceReset { sendTransportReset(interrupt: activation.interrupt) }
    }

    /// Stops the worker and closes every connection's host socket; the
    /// listener stays bound (host clients wait in its backlog until the
    /// driver activates the device again).
    public func reset() {
        let worker = active.withLock { (current: inout VsockWorker?) -> VsockWorker? in
            defer { current = nil }
            return current
        }
        worker?.stop()
        eventQueue.withLock { $0 = nil }
    }

    /// Runs the data plane on the calling thread without a worker, for
    /// fuzzing: each element of `events` is one wake-up with these tokens
    /// ready (1 RX notification, 2 TX notification).
    @_spi(Fuzzing)
    public func serveSynchronously(_ activation: VirtioActivation, events: [[UInt64]]) {
        guard let muxer = try? VsockMuxer(guestCID: guestCID, activation: activation, listener: nil, counters: counters,
                                           vsockCounters: vsockCounters, limits: limits) else { return }
        for tokens in events {
            muxer.handle(tokens.map { Epoll.Event(token: $0, events: 1) }, now: VsockMuxer.now())
        }
        muxer.shutdown()
    }
}

/// The muxer behind a lock, and the thread that drives it. Only the worker
/// thread takes the lock while running; it makes start and stop safe.
final class VsockWorker: Sendable {
    let muxer: Mutex<VsockMuxer>
    let epoll: Epoll
    let stopEvent: EventFD
    let thread = Mutex<HostThread?>(nil)

    init(muxer: sending VsockMuxer) throws(SystemCallError) {
        epoll = muxer.epoll
        stopEvent = try EventFD()
        try epoll.add(stopEvent.descriptor.rawValue, token: VsockMuxer.Token.stop)
        self.muxer = Mutex(muxer)
        let started = try HostThread(name: "virtio-vsock") { [self] in self.run() }
        thread.withLock { $0 = started }
    }

    func run() {
        // Buffers the driver queued before DRIVER_OK need no notification.
        muxer.withLock { muxer in
            muxer.handle([Epoll.Event(token: VsockMuxer.Token.transmitNotification, events: 1)], now: VsockMuxer.now())
        }
        while true {
            let timeout = muxer.withLock { $0.waitTimeout(now: VsockMuxer.now()) }
            guard let events = try? epoll.wait(maxEvents: 64, timeout: timeout) else { continue }
            if events.contains(where: { $0.token == VsockMuxer.Token.stop }) { return }
            muxer.withLock { $0.handle(events, now: VsockMuxer.now()) }
        }
    }

    /// Wakes the thread, waits for it, and closes the connections.
    func stop() {
        try? stopEvent.signal()
        let running = thread.withLock { current -> HostThread? in
            defer { current = nil }
            return current
        }
        running?.join()
        muxer.withLock { $0.shutdown() }
    }
}
