import SnapshotFormat

/// Where a device is in walking one split queue: what a restored device
/// needs to go on without repeating or skipping a chain. The rings
/// themselves are in guest RAM, saved with it.
public struct VirtqueueState: Sendable, Equatable {
    /// The next available-ring slot to read (free-running).
    public var nextAvailable: UInt16
    /// The next used-ring slot to write (free-running).
    public var nextUsed: UInt16
    /// `nextUsed` at the last interrupt check (the event-index window).
    public var usedAtLastInterruptCheck: UInt16

    public init(nextAvailable: UInt16, nextUsed: UInt16, usedAtLastInterruptCheck: UInt16) {
        self.nextAvailable = nextAvailable
        self.nextUsed = nextUsed
        self.usedAtLastInterruptCheck = usedAtLastInterruptCheck
    }

    public func encode(into encoder: inout StateEncoder) {
        encoder.encode(nextAvailable)
        encoder.encode(nextUsed)
        encoder.encode(usedAtLastInterruptCheck)
    }

    /// Refuses more chains in flight (taken, not yet used) than `size` holds.
    public static func decode(from decoder: inout StateDecoder, size: UInt16) throws(StateDecodingError) -> VirtqueueState {
        let start = decoder.offset
        let state = VirtqueueState(nextAvailable: try decoder.decode(), nextUsed: try decoder.decode(),
                                   usedAtLastInterruptCheck: try decoder.decode())
        guard state.nextAvailable &- state.nextUsed <= size else {
            throw .invalidValue(offset: start, what: "queue indexes (\(state.nextAvailable) available, \(state.nextUsed) used, size \(size))")
        }
        return state
    }
}

extension Virtqueue {
    /// The walking state now.
    public var walkState: VirtqueueState {
        VirtqueueState(nextAvailable: nextAvailable, nextUsed: nextUsed, usedAtLastInterruptCheck: usedAtLastInterruptCheck)
    }

    /// Goes on from a saved walking state (a restored device, before it serves).
    public mutating func restore(_ state: VirtqueueState) {
        nextAvailable = state.nextAvailable
        nextUsed = state.nextUsed
        usedAtLastInterruptCheck = state.usedAtLastInterruptCheck
    }
}

/// What a device hands the transport for a snapshot, once it has stopped
/// serving its queues (`VirtioDevice.suspendForSnapshot`).
public struct VirtioDeviceSnapshot: Sendable, Equatable {
    /// Each running queue's walking state, by queue index.
    public var queues: [Int: VirtqueueState]
    /// The device's own state, encoded by the device.
    public var device: [UInt8]

    public init(queues: [Int: VirtqueueState] = [:], device: [UInt8] = []) {
        self.queues = queues
        self.device = device
    }
}

/// The transport-independent registers of a virtio transport, and each
/// running queue's walking state, as a snapshot keeps them.
public struct VirtioTransportState: Sendable, Equatable {
    public var deviceFeatureSelect: UInt32
    public var driverFeatureSelect: UInt32
    public var driverFeatures: UInt64
    /// As the driver wrote it (DEVICE_NEEDS_RESET is saved by the transport).
    public var status: UInt8
    public var queueSelect: UInt32
    public var queues: [VirtioQueueRegisters]
    /// The driver set DRIVER_OK and the queues started.
    public var active: Bool
    /// For an active device, each enabled queue's walking state (index = queue).
    public var queueStates: [VirtqueueState?]

    /// Most queues any device here has (vsock and console have 3 and 4).
    public static let maximumQueues = 64
    static let queueRecordSize = 2 + 1 + 24 + 1

    public func encode(into encoder: inout StateEncoder) {
        encoder.encode(deviceFeatureSelect)
        encoder.encode(driverFeatureSelect)
        encoder.encode(driverFeatures)
        encoder.encode(status)
        encoder.encode(queueSelect)
        encoder.encode(active)
        encoder.encode(array: Array(zip(queues, queueStates))) { encoder, pair in
            let (queue, walk) = pair
            encoder.encode(queue.size)
            encoder.encode(queue.enabled)
            encoder.encode(queue.descriptorTable)
            encoder.encode(queue.driverArea)
            encoder.encode(queue.deviceArea)
            encoder.encode(walk != nil)
            walk?.encode(into: &encoder)
        }
    }

    /// Reads what `encode` wrote for a device with `queueMaximumSizes` and
    /// `offeredFeatures` (the transport's, VERSION_1 included). Refuses
    /// what the registers could never hold: another queue count, a size over
    /// the maximum, an enabled queue whose size is not a power of two,
    /// features not offered, DRIVER_OK without FEATURES_OK, a running
    /// device without DRIVER_OK, walking state for a queue that is not running.
    public static func decode(from decoder: inout StateDecoder, queueMaximumSizes: [UInt16],
                              offeredFeatures: UInt64) throws(StateDecodingError) -> VirtioTransportState {
        let deviceFeatureSelect: UInt32 = try decoder.decode()
        let driverFeatureSelect: UInt32 = try decoder.decode()
        let featuresOffset = decoder.offset
        let driverFeatures: UInt64 = try decoder.decode()
        let statusOffset = decoder.offset
        let status: UInt8 = try decoder.decode()
        let queueSelect: UInt32 = try decoder.decode()
        let active = try decoder.decodeBool()
        guard status & VirtioStatus.deviceNeedsReset == 0 else { throw .invalidValue(offset: statusOffset, what: "device status 0x\(String(status, radix: 16))") }
        if status & VirtioStatus.featuresOK != 0 {
            guard driverFeatures & ~offeredFeatures == 0, driverFeatures & VirtioFeature.version1 != 0 else {
                throw .invalidValue(offset: featuresOffset, what: "driver features 0x\(String(driverFeatures, radix: 16)) (offered 0x\(String(offeredFeatures, radix: 16)))")
            }
        }
        if status & VirtioStatus.driverOK != 0 && status & VirtioStatus.featuresOK == 0 {
            throw .invalidValue(offset: statusOffset, what: "device status 0x\(String(status, radix: 16)) (DRIVER_OK without FEATURES_OK)")
        }
        if active && status & VirtioStatus.driverOK == 0 {
            throw .invalidValue(offset: statusOffset, what: "running device without DRIVER_OK")
        }
        let countOffset = decoder.offset
        let records = try decoder.decodeArray(maximumCount: maximumQueues, minimumElementSize: queueRecordSize) {
            (decoder) throws(StateDecodingError) -> (VirtioQueueRegisters, VirtqueueState?, Int) in
            let start = decoder.offset
            var queue = VirtioQueueRegisters(size: try decoder.decode())
            queue.enabled = try decoder.decodeBool()
            queue.descriptorTable = try decoder.decode()
            queue.driverArea = try decoder.decode()
            queue.deviceArea = try decoder.decode()
            let walk = try decoder.decodeBool() ? try VirtqueueState.decode(from: &decoder, size: queue.size) : nil
            return (queue, walk, start)
        }
        guard records.count == queueMaximumSizes.count else {
            throw .invalidValue(offset: countOffset, what: "queue count \(records.count) (the device has \(queueMaximumSizes.count))")
        }
        for (index, (queue, walk, start)) in records.enumerated() {
            let maximum = queueMaximumSizes[index]
            guard queue.size <= maximum else { throw .invalidValue(offset: start, what: "queue \(index) size \(queue.size) (maximum \(maximum))") }
            if queue.enabled || walk != nil {
                guard queue.size != 0, queue.size & (queue.size - 1) == 0 else {
                    throw .invalidValue(offset: start, what: "queue \(index) size \(queue.size) (not a power of two)")
                }
            }
            // A running queue may lack one: a device that never walks it.
            guard walk == nil || (active && queue.enabled) else {
                throw .invalidValue(offset: start, what: "queue \(index) walking state for a queue that is not running")
            }
        }
        return VirtioTransportState(deviceFeatureSelect: deviceFeatureSelect, driverFeatureSelect: driverFeatureSelect,
                                    driverFeatures: driverFeatures, status: status, queueSelect: queueSelect,
                                    queues: records.map(\.0), active: active, queueStates: records.map(\.1))
    }
}

extension VirtioTransportCore {
    /// The registers now, with `snapshot`'s walking state for each running queue.
    public func savedState(_ snapshot: VirtioDeviceSnapshot) -> VirtioTransportState {
        VirtioTransportState(deviceFeatureSelect: deviceFeatureSelect, driverFeatureSelect: driverFeatureSelect,
                             driverFeatures: driverFeatures, status: status, queueSelect: queueSelect, queues: queues,
                             active: active,
                             queueStates: queues.indices.map { active && queues[$0].enabled ? snapshot.queues[$0] : nil })
    }

    /// Puts the registers back (not running: a restored active device is
    /// started with `startQueues(memory:interrupt:restoring:)`).
    public mutating func restoreRegisters(_ state: VirtioTransportState) {
        deviceFeatureSelect = state.deviceFeatureSelect
        driverFeatureSelect = state.driverFeatureSelect
        driverFeatures = state.driverFeatures
        status = state.status
        queueSelect = state.queueSelect
        queues = state.queues
    }
}
