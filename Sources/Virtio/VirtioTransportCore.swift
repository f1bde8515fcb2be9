import GuestMemory
import HostSystem

/// One queue as the driver set it up through the transport's registers.
public struct VirtioQueueRegisters: Sendable, Equatable {
    public var size: UInt16
    public var enabled = false
    public var descriptorTable: UInt64 = 0
    public var driverArea: UInt64 = 0
    public var deviceArea: UInt64 = 0

    public init(size: UInt16) {
        self.size = size
    }
}

/// The three guest addresses of a split queue (VirtIO 1.2 section 2.7).
public enum VirtioQueueArea: Sendable {
    case descriptorTable, driverArea, deviceArea
}

/// What a status write asks the transport to do besides storing the value.
public enum VirtioStatusTransition: Sendable, Equatable {
    /// Nothing more: the status was stored (or the write ignored).
    case none
    /// The driver wrote 0: stop the device, then call `reset()`.
    case reset
    /// DRIVER_OK after a successful FEATURES_OK: call `startQueues`.
    case activate
}

/// Why the queues could not start at DRIVER_OK; the transport reports it
/// with `reportDeviceError` (DEVICE_NEEDS_RESET).
public enum VirtioTransportError: Error, Sendable, CustomStringConvertible {
    case queue(index: Int, VirtqueueError)
    case notificationEventFD(queue: Int, SystemCallError)

    public var description: String {
        switch self {
        case let .queue(index, error): "queue \(index): \(error)"
        case let .notificationEventFD(queue, error): "queue \(queue): cannot create its notification eventfd: \(error)"
        }
    }
}

/// The transport-independent half of a virtio transport, shared by
/// virtio-pci (VirtIO 1.2 section 4.1) and virtio-mmio (section 4.2): the
/// feature words and their selectors, the device status state machine
/// (section 3.1), the queue registers and the rule that fixes them once a
/// queue is enabled or the driver is running, the queues handed to the
/// device at DRIVER_OK, and reset.
///
/// A plain value: each transport keeps it inside its registers lock and
/// does the side effects (notifier registration, interrupts, the device's
/// `activate` and `reset`) around the calls.
public struct VirtioTransportCore: Sendable {
    /// The device's features plus VERSION_1 (no transport here has a legacy
    /// interface); never RING_PACKED.
    public let offeredFeatures: UInt64
    public let queueMaximumSizes: [UInt16]
    /// The device's `maximumChainLength`, applied to every queue it gets.
    public let maximumChainLength: UInt64
    public var deviceFeatureSelect: UInt32 = 0
    public var driverFeatureSelect: UInt32 = 0
    public internal(set) var driverFeatures: UInt64 = 0
    /// As the driver wrote it (DEVICE_NEEDS_RESET is the transport's to add).
    public internal(set) var status: UInt8 = 0
    public var queueSelect: UInt32 = 0
    public internal(set) var queues: [VirtioQueueRegisters]
    /// While the device runs: each enabled queue's notification eventfd
    /// (index = queue), for the transport to register and signal.
    public private(set) var notifiers: [EventFD?] = []
    /// Between a successful DRIVER_OK and the next reset.
    public private(set) var active = false

    public init(device: any VirtioDevice) {
        offeredFeatures = (device.offeredFeatures | VirtioFeature.version1) & ~VirtioFeature.ringPacked
        queueMaximumSizes = device.queueMaximumSizes
        maximumChainLength = device.maximumChainLength
        queues = queueMaximumSizes.map { VirtioQueueRegisters(size: $0) }
    }

    // MARK: Features

    /// The 32 offered feature bits `deviceFeatureSelect` names (0 past bit 63).
    public var deviceFeatureWord: UInt32 {
        deviceFeatureSelect < 2 ? UInt32(truncatingIfNeeded: offeredFeatures >> (32 * UInt64(deviceFeatureSelect))) : 0
    }

    /// The 32 accepted feature bits `driverFeatureSelect` names.
    public var driverFeatureWord: UInt32 {
        driverFeatureSelect < 2 ? UInt32(truncatingIfNeeded: driverFeatures >> (32 * UInt64(driverFeatureSelect))) : 0
    }

    /// Features are fixed once FEATURES_OK is set (3.1.1); words past bit 63 are ignored.
    public mutating func writeDriverFeatureWord(_ value: UInt32) {
        guard status & VirtioStatus.featuresOK == 0, driverFeatureSelect < 2 else { return }
        let shift = 32 * UInt64(driverFeatureSelect)
        driverFeatures = (driverFeatures & ~(0xFFFF_FFFF << shift)) | (UInt64(value) << shift)
    }

    // MARK: Queues

    /// The queue `queueSelect` names, if the device has it.
    public var selectedQueue: VirtioQueueRegisters? {
        queueSelect < UInt32(queues.count) ? queues[Int(queueSelect)] : nil
    }

    /// The selected queue's maximum size; 0 for an absent queue (it reads so).
    public var selectedQueueMaximumSize: UInt16 {
        queueSelect < UInt32(queues.count) ? queueMaximumSizes[Int(queueSelect)] : 0
    }

    /// Queue layout may change only while the queue is off and before DRIVER_OK.
    public var selectedQueueWritable: Bool {
        guard let queue = selectedQueue else { return false }
        return !queue.enabled && status & VirtioStatus.driverOK == 0
    }

    /// Any size up to the maximum is stored; `Virtqueue` checks at DRIVER_OK
    /// that it is a power of two.
    public mutating func setSelectedQueueSize(_ value: UInt64) {
        guard selectedQueueWritable, value <= UInt64(selectedQueueMaximumSize) else { return }
        queues[Int(queueSelect)].size = UInt16(value)
    }

    public mutating func setSelectedQueueAddress(_ area: VirtioQueueArea, _ value: UInt64) {
        guard selectedQueueWritable else { return }
        let index = Int(queueSelect)
        switch area {
        case .descriptorTable: queues[index].descriptorTable = value
        case .driverArea: queues[index].driverArea = value
        case .deviceArea: queues[index].deviceArea = value
        }
    }

    /// Enabling needs a writable queue; disabling (virtio-mmio's QueueReady
    /// 0) is allowed until DRIVER_OK. Afterwards only a reset stops a queue.
    public mutating func setSelectedQueueEnabled(_ enabled: Bool) {
        guard let queue = selectedQueue, status & VirtioStatus.driverOK == 0, queue.enabled != enabled else { return }
        queues[Int(queueSelect)].enabled = enabled
    }

    // MARK: Status

    /// Applies a status write (3.1.1): 0 resets; bits are never cleared any
    /// other way; the driver cannot set DEVICE_NEEDS_RESET; FEATURES_OK
    /// sticks only for an acceptable feature set (`report` gets the event,
    /// naming the device as `name`, when features are refused); DRIVER_OK
    /// needs FEATURES_OK and no FAILED.
    public mutating func writeStatus(_ value: UInt8, name: String,
                                     report: (DeviceEventKind, @autoclosure () -> String) -> Void) -> VirtioStatusTransition {
        if value == 0 { return .reset }
        let old = status
        var new = value & ~VirtioStatus.deviceNeedsReset
        guard new & old == old else { return .none }
        if new & VirtioStatus.featuresOK != 0 && old & VirtioStatus.featuresOK == 0 && !acceptFeatures(name: name, report: report) {
            new &= ~VirtioStatus.featuresOK
        }
        if new & VirtioStatus.driverOK != 0 && old & VirtioStatus.driverOK == 0 {
            guard new & VirtioStatus.featuresOK != 0, new & VirtioStatus.failed == 0 else {
                // DRIVER_OK before a successful FEATURES_OK: nothing to start.
                status = new & ~VirtioStatus.driverOK
                return .none
            }
            status = new
            return .activate
        }
        status = new
        return .none
    }

    /// FEATURES_OK is granted for a subset of the offered features that
    /// includes VERSION_1.
    private func acceptFeatures(name: String, report: (DeviceEventKind, @autoclosure () -> String) -> Void) -> Bool {
        guard driverFeatures & VirtioFeature.version1 != 0 else {
            report(.legacyDriverRefused, "\(name): refused a legacy-only driver: it did not accept VIRTIO_F_VERSION_1 (features 0x\(String(driverFeatures, radix: 16))); this device speaks VirtIO 1.x only")
            return false
        }
        guard driverFeatures & ~offeredFeatures == 0 else {
            report(.featuresRefused, "\(name): refused FEATURES_OK: the driver accepted features 0x\(String(driverFeatures & ~offeredFeatures, radix: 16)) that were not offered (offered 0x\(String(offeredFeatures, radix: 16)))")
            return false
        }
        return true
    }

    // MARK: Activation and reset

    /// DRIVER_OK: a validated `Virtqueue` and a notification eventfd for
    /// every enabled queue, recorded in `notifiers`, and the activation to
    /// hand the device. On a bad queue nothing starts and the error says
    /// which queue (the transport reports it as DEVICE_NEEDS_RESET).
    /// `restoring` (index = queue) puts each queue's walking state back, for
    /// a device restored from a snapshot.
    public mutating func startQueues(memory: GuestMemory, interrupt: any VirtioInterrupt,
                                     restoring walkStates: [VirtqueueState?] = []) throws(VirtioTransportError) -> VirtioActivation {
        var started: [VirtioQueueActivation] = []
        for (index, queue) in queues.enumerated() where queue.enabled {
            let configuration = VirtqueueConfiguration(
                size: queue.size, descriptorTable: GuestAddress(queue.descriptorTable),
                availableRing: GuestAddress(queue.driverArea), usedRing: GuestAddress(queue.deviceArea))
            var virtqueue: Virtqueue
            do {
                virtqueue = try Virtqueue(configuration: configuration, maximumSize: queueMaximumSizes[index],
                                          features: driverFeatures, memory: memory, maximumChainLength: maximumChainLength)
            } catch {
                throw .queue(index: index, error)
            }
            if index < walkStates.count, let walk = walkStates[index] { virtqueue.restore(walk) }
            let notification: EventFD
            do {
                notification = try EventFD()
            } catch {
                throw .notificationEventFD(queue: index, error)
            }
            started.append(VirtioQueueActivation(index: index, queue: virtqueue, notification: notification))
        }
        notifiers = Array(repeating: nil, count: queues.count)
        for queue in started { notifiers[queue.index] = queue.notification }
        active = true
        return VirtioActivation(memory: memory, features: driverFeatures, queues: started, interrupt: interrupt)
    }

    /// The running queue `index`'s notification eventfd, for a notification
    /// that reached user space instead of the ioeventfd.
    public func notifier(queue index: UInt64) -> EventFD? {
        active && index < UInt64(notifiers.count) ? notifiers[Int(index)] : nil
    }

    /// Every register back to its initial value (4.1.4.3.1, 4.2.2.1). Call
    /// it after the device's own `reset()` and after unregistering `notifiers`.
    public mutating func reset() {
        notifiers = []
        active = false
        deviceFeatureSelect = 0
        driverFeatureSelect = 0
        driverFeatures = 0
        status = 0
        queueSelect = 0
        queues = queueMaximumSizes.map { VirtioQueueRegisters(size: $0) }
    }
}
