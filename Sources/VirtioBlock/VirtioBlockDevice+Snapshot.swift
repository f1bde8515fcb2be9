import SnapshotFormat
import Virtio

/// What a virtio-blk device keeps in a snapshot besides its transport's
/// registers and its queue's walking state: the disk as the guest knew it.
/// The image itself is not copied; a restore serves the configured one,
/// which must be the same size and mode.
public struct BlockSnapshotState: Sendable, Equatable {
    public var capacityInSectors: UInt64
    public var readOnly: Bool
    /// The GET_ID serial, zero-padded to 20 bytes.
    public var serial: [UInt8]

    public static let tag = SectionTag("VBLK")

    public init(capacityInSectors: UInt64, readOnly: Bool, serial: [UInt8]) {
        self.capacityInSectors = capacityInSectors
        self.readOnly = readOnly
        self.serial = serial
    }

    public func encode(into encoder: inout StateEncoder) {
        encoder.section(Self.tag) { encoder in
            encoder.encode(capacityInSectors)
            encoder.encode(readOnly)
            encoder.encode(bytes: serial)
        }
    }

    public static func decode(from decoder: inout StateDecoder) throws(StateDecodingError) -> BlockSnapshotState {
        try decoder.section(tag) { (decoder) throws(StateDecodingError) in
            let capacity: UInt64 = try decoder.decode()
            let readOnly = try decoder.decodeBool()
            let start = decoder.offset
            let serial = try decoder.decodeBytes(maximumLength: BlockLimits.identifierSize)
            guard serial.count == BlockLimits.identifierSize else { throw .invalidValue(offset: start, what: "GET_ID serial of \(serial.count) bytes") }
            return BlockSnapshotState(capacityInSectors: capacity, readOnly: readOnly, serial: serial)
        }
    }
}

extension VirtioBlockDevice {
    var label: String { "virtio-blk \(name)" }

    /// The disk as the guest sees it now.
    public var snapshotState: BlockSnapshotState {
        backing.withLock { BlockSnapshotState(capacityInSectors: $0.disk.capacityInSectors, readOnly: readOnly, serial: $0.serialBytes) }
    }

    /// Waits for the worker to finish the requests it took (every request
    /// is completed before capture), then holds it until `resumeAfterSnapshot`.
    public func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot {
        let queues = running.withLock { running -> [Int: VirtqueueState] in
            guard let running else { return [:] }
            return [running.handler.queueIndex: running.handler.suspend()]
        }
        var encoder = StateEncoder()
        snapshotState.encode(into: &encoder)
        return VirtioDeviceSnapshot(queues: queues, device: encoder.bytes)
    }

    public func resumeAfterSnapshot() {
        running.withLock { running in
            guard let running else { return }
            running.handler.unsuspend()
            // Notifications that came while held were taken unserved: wake the worker to look.
            try? running.updateEvent.signal()
        }
    }

    /// Refuses a saved disk of another size or mode than the configured image.
    public func restoreSnapshot(device state: [UInt8]) throws(VirtioDeviceError) {
        var decoder = StateDecoder(state)
        let saved: BlockSnapshotState
        do {
            saved = try BlockSnapshotState.decode(from: &decoder)
            try decoder.finish()
        } catch {
            throw .snapshotState(device: label, cause: error)
        }
        let current = snapshotState
        guard saved.capacityInSectors == current.capacityInSectors else {
            throw .snapshotMismatch(device: label, part: "the disk's capacity in sectors",
                                    saved: "\(saved.capacityInSectors)", configured: "\(current.capacityInSectors)")
        }
        guard saved.readOnly == current.readOnly else {
            throw .snapshotMismatch(device: label, part: "read-only", saved: "\(saved.readOnly)", configured: "\(current.readOnly)")
        }
        // GET_ID answers as before the snapshot (a derived serial may differ on another host).
        backing.withLock { $0.serialBytes = saved.serial }
    }
}
