import GuestMemory
import HostSystem
import SnapshotFormat
import Synchronization

/// How a device tells the driver something happened. The transport
/// implements it (MSI-X vectors through irqfd, or INTx with the ISR register).
public protocol VirtioInterrupt: Sendable {
    /// Queue `index` has new used buffers.
    func signalUsedBuffers(queue index: Int)
    /// The device configuration space changed.
    func signalConfigurationChange()
    /// The driver broke the protocol (a bad chain, say): the transport sets
    /// DEVICE_NEEDS_RESET, logs `message` once and notifies the driver. The
    /// device stops serving its queues until reset; the VMM runs on.
    func reportDeviceError(_ message: String)
}

/// One queue the driver enabled, handed to the device at activation.
public struct VirtioQueueActivation: Sendable {
    /// The queue's index in the device (0 = first queue).
    public let index: Int
    public var queue: Virtqueue
    /// Signalled (through KVM's ioeventfd) when the driver notifies this queue.
    public let notification: EventFD

    public init(index: Int, queue: Virtqueue, notification: EventFD) {
        self.index = index
        self.queue = queue
        self.notification = notification
    }
}

/// What a device gets when the driver sets DRIVER_OK.
public struct VirtioActivation: Sendable {
    public let memory: GuestMemory
    /// The feature bits the driver accepted.
    public let features: UInt64
    /// The enabled queues, in index order (disabled queues are absent).
    public let queues: [VirtioQueueActivation]
    public let interrupt: any VirtioInterrupt

    public init(memory: GuestMemory, features: UInt64, queues: [VirtioQueueActivation], interrupt: any VirtioInterrupt) {
        self.memory = memory
        self.features = features
        self.queues = queues
        self.interrupt = interrupt
    }
}

public enum VirtioDeviceError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The device could not start serving its queues at DRIVER_OK.
    case activation(device: String, step: String, cause: String)
    /// The device kind does not save its state in a snapshot yet.
    case snapshotUnsupported(device: String)
    /// The device's saved state cannot be decoded.
    case snapshotState(device: String, cause: StateDecodingError)
    /// The saved state was another device's (another image size, say).
    case snapshotMismatch(device: String, part: String, saved: String, configured: String)

    public var description: String {
        switch self {
        case let .activation(device, step, cause): "\(device): activation failed while \(step): \(cause)"
        case let .snapshotUnsupported(device): "\(device): this device kind is not saved in snapshots yet"
        case let .snapshotState(device, cause): "\(device): saved state: \(cause)"
        case let .snapshotMismatch(device, part, saved, configured):
            "\(device): \(part) is \(saved) in the snapshot, \(configured) here"
        }
    }
}

/// A VirtIO device independent of its transport (section 4 describes the
/// transports, section 5 the devices).
public protocol VirtioDevice: AnyObject, Sendable {
    var deviceType: VirtioDeviceType { get }
    /// The maximum size of each queue; the count is the device's number of queues.
    var queueMaximumSizes: [UInt16] { get }
    /// The most bytes one descriptor chain may cover (readable plus
    /// writable); the queue walk refuses a longer chain and the queue breaks.
    var maximumChainLength: UInt64 { get }
    /// Feature bits offered: device-specific ones, plus INDIRECT_DESC and
    /// EVENT_IDX when supported. The transport adds VERSION_1.
    var offeredFeatures: UInt64 { get }
    /// Device configuration space: any offset and size; bytes beyond the
    /// structure read as zero and writes there are ignored.
    func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer)
    func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer)
    /// The driver set DRIVER_OK: start serving the queues (off the vCPU thread).
    func activate(_ activation: VirtioActivation) throws(VirtioDeviceError)
    /// The driver reset the device: stop serving queues, forget their state.
    /// Returns once no thread touches guest memory on the device's behalf.
    func reset()
    /// Counters the control API and benchmarks report.
    var counters: VirtioCounters { get }
    /// Device-specific counters (name, value) reported after `counters`.
    var deviceCounters: [(name: String, value: UInt64)] { get }

    // Snapshots: the VM is paused (no vCPU runs) around these calls.

    /// Stops serving the queues, waiting for every request in flight to
    /// complete, and returns each running queue's walking state and the
    /// device's own state. The device stays stopped until
    /// `resumeAfterSnapshot` (or `reset`), so guest RAM does not change
    /// under a memory copy.
    func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot
    /// Serves the queues again after `suspendForSnapshot`.
    func resumeAfterSnapshot()
    /// On a VM built for a restore, before the transport activates the
    /// device: takes back the device's own state from `suspendForSnapshot`.
    func restoreSnapshot(device state: [UInt8]) throws(VirtioDeviceError)
}

extension VirtioDevice {
    /// Devices that move chains in bounded pieces (zero-copy I/O) need no cap.
    public var maximumChainLength: UInt64 { .max }

    /// Most devices have only the common counters.
    public var deviceCounters: [(name: String, value: UInt64)] { [] }

    /// Device kinds without snapshot support refuse to be saved.
    public func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot {
        throw .snapshotUnsupported(device: "\(deviceType)")
    }

    public func resumeAfterSnapshot() {}

    public func restoreSnapshot(device state: [UInt8]) throws(VirtioDeviceError) {
        throw .snapshotUnsupported(device: "\(deviceType)")
    }
}

/// Per-device activity counters, updated with relaxed atomics from the
/// device's own threads.
public final class VirtioCounters: Sendable {
    /// Queue notifications consumed (ioeventfd signals read).
    public let notifications = Atomic<UInt64>(0)
    /// Interrupts sent to the driver, counted by the transport (which knows
    /// whether a vector exists and was raised); devices do not count them.
    public let interrupts = Atomic<UInt64>(0)
    /// Requests (chains) completed.
    public let requests = Atomic<UInt64>(0)
    /// Bytes the device read from guest buffers (written by the guest: disk writes, TX).
    public let bytesFromGuest = Atomic<UInt64>(0)
    /// Bytes the device wrote into guest buffers (disk reads, RX).
    public let bytesToGuest = Atomic<UInt64>(0)
    /// Requests completed with an error status.
    public let errors = Atomic<UInt64>(0)

    public init() {}

    /// Name and value of every counter, for reports.
    public var snapshot: [(name: String, value: UInt64)] {
        [("notifications", notifications.load(ordering: .relaxed)),
         ("interrupts", interrupts.load(ordering: .relaxed)),
         ("requests", requests.load(ordering: .relaxed)),
         ("bytes_from_guest", bytesFromGuest.load(ordering: .relaxed)),
         ("bytes_to_guest", bytesToGuest.load(ordering: .relaxed)),
         ("errors", errors.load(ordering: .relaxed))]
    }
}
