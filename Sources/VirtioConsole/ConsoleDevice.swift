import Devices
import GuestMemory
import HostSystem
import Synchronization
import Virtio

/// virtio-console (VirtIO 1.2 section 5.3) with one port: the guest's hvc0.
/// What the guest transmits goes to a `SerialOutput` (the terminal, a log
/// file); what the host types is queued and delivered into the guest's
/// receive buffers. No MULTIPORT, so there is no control queue.
public final class ConsoleDevice: VirtioDevice {
    public static let queueSize: UInt16 = 256
    /// Input held while the guest has no receive buffers posted.
    public static let inputCapacity = 64 << 10
    /// The most bytes one chain may cover: hvc sends at most a page per
    /// chain, and a larger one would only make the VMM read more at once.
    public static let chainLengthLimit: UInt64 = 1 << 20
    /// Transmitted bytes go to the output in pieces of at most this size,
    /// read straight from guest memory: a chain is never gathered whole.
    public static let transmitPieceSize = 4096
    static let receiveQueue = 0
    static let transmitQueue = 1

    public let deviceType = VirtioDeviceType.console
    public let queueMaximumSizes: [UInt16] = [ConsoleDevice.queueSize, ConsoleDevice.queueSize]
    /// SIZE is not offered: the terminal size is not tracked.
    public let offeredFeatures: UInt64 = VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
    public let counters = VirtioCounters()
    public var maximumChainLength: UInt64 { Self.chainLengthLimit }

    let output: any SerialOutput
    /// Bytes typed but not yet delivered.
    let pendingInput = Mutex<[UInt8]>([])
    /// Wakes the worker when input arrives.
    let inputEvent: EventFD
    let worker = Mutex<VirtioWorker?>(nil)
    /// The running worker's queues (snapshots read their walking state).
    let runningQueues = Mutex<ConsoleQueuesBox?>(nil)

    public init(output: any SerialOutput) throws(ConsoleError) {
        self.output = output
        do {
            inputEvent = try EventFD()
        } catch {
            throw .eventFD(cause: error)
        }
    }

    // MARK: Configuration space: cols, rows (u16 each), max_nr_ports (u32), emerg_wr (u32).

    public func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        var bytes = [UInt8](repeating: 0, count: 12)
        bytes[4] = 1  // max_nr_ports = 1
        for index in 0..<data.count {
            let position = offset &+ UInt64(index)
            data[index] = position < UInt64(bytes.count) ? bytes[Int(position)] : 0
        }
    }

    /// emerg_wr (offset 8, EMERG_WRITE feature) is not offered; other fields are read-only.
    public func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {}

    // MARK: Input from the host

    /// Queues typed bytes for the guest; returns how many fit.
    public func enqueueInput(_ bytes: some Collection<UInt8>) -> Int {
        let accepted = pendingInput.withLock { pending -> Int in
            let count = min(bytes.count, Self.inputCapacity - pending.count)
            pending.append(contentsOf: bytes.prefix(count))
            return count
        }
        if accepted > 0 { try? inputEvent.signal() }
        return accepted
    }

    /// Room for more input.
    public var inputSpace: Int { pendingInput.withLock { Self.inputCapacity - $0.count } }

    // MARK: Lifecycle

    public func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {
        let box = ConsoleQueuesBox(ConsoleQueues(activation: activation))
        var descriptors = activation.queues.map { $0.notification.descriptor.rawValue }
        descriptors.append(inputEvent.descriptor.rawValue)
        let inputIndex = descriptors.count - 1
        do {
            let newWorker = try VirtioWorker(name: "virtio-console", descriptors: descriptors) { [self] ready in
                box.state.withLock { queues in
                    for index in ready where index < activation.queues.count {
                        _ = try? activation.queues[index].notification.consume()
                        counters.notifications.wrappingAdd(1, ordering: .relaxed)
                    }
                    if ready.contains(inputIndex) { _ = try? inputEvent.consume() }
                    serve(&queues, activation: activation)
                }
            }
            worker.withLock { $0 = newWorker }
            runningQueues.withLock { $0 = box }
        } catch {
            throw .activation(device: "virtio-console", step: "starting its worker thread", cause: "\(error)")
        }
        // Input typed before the driver was ready.
        try? inputEvent.signal()
    }

    public func reset() {
        let stopped = worker.withLock { current -> VirtioWorker? in
            defer { current = nil }
            return current
        }
        stopped?.stop()
        runningQueues.withLock { $0 = nil }
    }

    /// Serves `activation`'s queues once on the calling thread, as the worker
    /// does after a notification, without starting a worker: for fuzz
    /// targets, which need each input handled deterministically. Returns
    /// whether the driver broke the queues.
    public func serveOnce(_ activation: VirtioActivation) -> Bool {
        var queues = ConsoleQueues(activation: activation)
        serve(&queues, activation: activation)
        return queues.broken
    }

    /// Drains the transmit queue to the output and fills receive buffers
    /// with pending input. A protocol error stops the queues until reset.
    func serve(_ queues: inout ConsoleQueues, activation: VirtioActivation) {
        guard !queues.broken, !queues.suspended else { return }
        do {
            if var transmit = queues.transmit {
                try drainTransmit(&transmit, memory: activation.memory, interrupt: activation.interrupt)
                queues.transmit = transmit
            }
            if var receive = queues.receive {
                try fillReceive(&receive, memory: activation.memory, interrupt: activation.interrupt)
                queues.receive = receive
            }
        } catch {
            queues.broken = true
            counters.errors.wrappingAdd(1, ordering: .relaxed)
            activation.interrupt.reportDeviceError("virtio-console: \(error)")
        }
    }

    func drainTransmit(_ entry: inout VirtioQueueActivation, memory: GuestMemory, interrupt: any VirtioInterrupt) throws(VirtqueueError) {
        repeat {
            while let chain = try entry.queue.popChain() {
                var transmitted: UInt64 = 0
                for buffer in chain.readable {
                    var offset: UInt64 = 0
                    while offset < UInt64(buffer.length) {
                        let count = Int(min(UInt64(Self.transmitPieceSize), UInt64(buffer.length) - offset))
                        let piece = try VirtqueueError.guarding { () throws(GuestMemoryError) in
                            try memory.readBytes(at: buffer.address + offset, count: count)
                        }
                        output.write(piece)
                        offset += UInt64(count)
                    }
                    transmitted += UInt64(buffer.length)
                }
                try entry.queue.addUsed(head: chain.head, writtenLength: 0)
                counters.requests.wrappingAdd(1, ordering: .relaxed)
                counters.bytesFromGuest.wrappingAdd(transmitted, ordering: .relaxed)
            }
            if try entry.queue.shouldInterrupt() {
                interrupt.signalUsedBuffers(queue: entry.index)
            }
        } while try entry.queue.enableNotifications()
    }

    func fillReceive(_ entry: inout VirtioQueueActivation, memory: GuestMemory, interrupt: any VirtioInterrupt) throws(VirtqueueError) {
        while pendingInput.withLock({ !$0.isEmpty }) {
            guard let chain = try entry.queue.popChain() else { break }
            var writer = ChainWriter(memory: memory, buffers: chain.writable)
            let chunk = pendingInput.withLock { Array($0.prefix(Int(min(writer.remaining, UInt64(Self.inputCapacity))))) }
            let written = try VirtqueueError.guarding { () throws(GuestMemoryError) in try writer.write(bytes: chunk) }
            pendingInput.withLock { $0.removeFirst(min(written, $0.count)) }
            try entry.queue.addUsed(head: chain.head, writtenLength: writer.written)
            counters.requests.wrappingAdd(1, ordering: .relaxed)
            counters.bytesToGuest.wrappingAdd(UInt64(written), ordering: .relaxed)
        }
        if try entry.queue.shouldInterrupt() {
            interrupt.signalUsedBuffers(queue: entry.index)
        }
        _ = try entry.queue.enableNotifications()
    }
}

/// The queues the driver enabled, owned by the worker thread.
struct ConsoleQueues: Sendable {
    var receive: VirtioQueueActivation?
    var transmit: VirtioQueueActivation?
    var broken = false
    /// Held for a snapshot: notifications are taken but nothing is served.
    var suspended = false

    init(activation: VirtioActivation) {
        receive = activation.queues.first { $0.index == ConsoleDevice.receiveQueue }
        transmit = activation.queues.first { $0.index == ConsoleDevice.transmitQueue }
        // The cap holds however the queues were built (the transports apply it too).
        receive?.queue.limitChainLength(to: ConsoleDevice.chainLengthLimit)
        transmit?.queue.limitChainLength(to: ConsoleDevice.chainLengthLimit)
    }
}

/// The queues behind the worker's lock, shared with snapshot capture.
final class ConsoleQueuesBox: Sendable {
    let state: Mutex<ConsoleQueues>

    init(_ queues: ConsoleQueues) { state = Mutex(queues) }
}
