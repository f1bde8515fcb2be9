import SnapshotFormat
import Synchronization
import Virtio

extension NetDataPlane {
    /// Holds the plane for a snapshot (the caller has its lock, which the
    /// worker holds for a whole wake-up) and returns the queues' walking
    /// state: its pair's RX and TX queues, and the control queue on pair 0.
    /// RX chains taken ahead of frames (`spare`) and a TX chain the limiter
    /// deferred were taken but not used: the saved state steps back over
    /// them, so a restored device takes them again. A frame read from the
    /// tap and not yet delivered stays with this plane; a restored device
    /// never sees it (a lost frame, which networks tolerate). Control
    /// requests complete within one wake-up, so none is ever in flight.
    mutating func suspend() -> [Int: VirtqueueState] {
        if !suspended {
            suspended = true
            tapWatchedBeforeSuspend = tapWatched
            setTapWatched(false)
        }
        var states: [Int: VirtqueueState] = [:]
        if var walk = receiveQueue?.walkState {
            walk.nextAvailable &-= UInt16(truncatingIfNeeded: spare.count)
            states[receiveQueueIndex] = walk
        }
        if var walk = transmitQueue?.walkState {
            if deferredTransmit != nil { walk.nextAvailable &-= 1 }
            states[transmitQueueIndex] = walk
        }
        if let index = controlQueueIndex, let walk = controlQueue?.walkState {
            states[index] = walk
        }
        return states
    }

    mutating func unsuspend() {
        guard suspended else { return }
        suspended = false
        setTapWatched(tapWatchedBeforeSuspend)
        // Wakes the worker: it applies updates, re-checks whether its pair
        // is enabled (attaching or detaching its tap queue) and serves.
        try? updateEvent?.signal()
    }
}

/// What virtio-net keeps in a snapshot besides its queues: the MAC address
/// the guest read and, for a multiqueue device or one with an MTU, the
/// number of queue pairs, how many the driver enabled
/// (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) and the MTU. A restore into a device
/// configured otherwise is refused.
///
/// The body is the MAC, then, only when there is more than one pair or an
/// MTU, a nested `VNMQ` section (pairs, active pairs, MTU or 0, each a
/// UInt16). A single-queue device without an MTU writes the MAC alone, as
/// before `VNMQ` existed, so snapshots of such devices read the same both
/// ways.
public struct NetSnapshotState: Sendable, Equatable {
    public var mac: [UInt8]
    /// max_virtqueue_pairs (`queues=`), 1...16.
    public var queuePairs: Int
    /// The pairs the driver enabled, 1...queuePairs (1 until it says).
    public var activePairs: Int
    /// VIRTIO_NET_F_MTU's value, nil when none is offered.
    public var mtu: UInt16?

    public static let tag = SectionTag("VNET")
    /// The multiqueue and MTU part, nested in `VNET` after the MAC.
    public static let multiqueueTag = SectionTag("VNMQ")

    public init(mac: [UInt8], queuePairs: Int = 1, activePairs: Int = 1, mtu: UInt16? = nil) {
        self.mac = mac
        self.queuePairs = queuePairs
        self.activePairs = activePairs
        self.mtu = mtu
    }

    /// Whether `VNMQ` is written: not for the single-queue device without an MTU.
    var hasMultiqueuePart: Bool { queuePairs != 1 || activePairs != 1 || mtu != nil }

    public func encode(into encoder: inout StateEncoder) {
        encoder.section(Self.tag) { encoder in
            encoder.encode(bytes: mac)
            guard hasMultiqueuePart else { return }
            encoder.section(Self.multiqueueTag) { encoder in
                encoder.encode(UInt16(clamping: queuePairs))
                encoder.encode(UInt16(clamping: activePairs))
                encoder.encode(mtu ?? 0)
            }
        }
    }

    /// Refuses a MAC of other than 6 bytes, pairs outside 1...16, active
    /// pairs outside 1...pairs, an MTU outside 68...65535, and a `VNMQ`
    /// that says nothing (one pair, no MTU: it is never written so).
    public static func decode(from decoder: inout StateDecoder) throws(StateDecodingError) -> NetSnapshotState {
        try decoder.section(tag) { (decoder) throws(StateDecodingError) in
            let start = decoder.offset
            let mac = try decoder.decodeBytes(maximumLength: 6)
            guard mac.count == 6 else { throw .invalidValue(offset: start, what: "MAC address of \(mac.count) bytes") }
            // Without VNMQ: a single-queue device without an MTU.
            guard !decoder.isAtEnd else { return NetSnapshotState(mac: mac) }
            let partStart = decoder.offset
            return try decoder.section(multiqueueTag) { (decoder) throws(StateDecodingError) in
                let pairsOffset = decoder.offset
                let pairs = Int(try decoder.decode(UInt16.self))
                guard (1...VirtioNetDevice.maximumQueuePairs).contains(pairs) else {
                    throw .invalidValue(offset: pairsOffset, what: "queue pair count \(pairs) (1 to \(VirtioNetDevice.maximumQueuePairs))")
                }
                let activeOffset = decoder.offset
                let active = Int(try decoder.decode(UInt16.self))
                guard (1...pairs).contains(active) else {
                    throw .invalidValue(offset: activeOffset, what: "active queue pair count \(active) (1 to \(pairs))")
                }
                let mtuOffset = decoder.offset
                let rawMTU = try decoder.decode(UInt16.self)
                guard rawMTU == 0 || VirtioNetDevice.mtuRange.contains(Int(rawMTU)) else {
                    throw .invalidValue(offset: mtuOffset, what: "MTU \(rawMTU) (0 for none, or \(VirtioNetDevice.mtuRange.lowerBound) to \(VirtioNetDevice.mtuRange.upperBound))")
                }
                let state = NetSnapshotState(mac: mac, queuePairs: pairs, activePairs: active, mtu: rawMTU == 0 ? nil : rawMTU)
                guard state.hasMultiqueuePart else {
                    throw .invalidValue(offset: partStart, what: "'\(multiqueueTag)' section for one queue pair without an MTU (never written)")
                }
                return state
            }
        }
    }
}

extension VirtioNetDevice {
    /// The device as errors name it: its tap interface, not one queue of it.
    var snapshotName: String { "virtio-net (\(tap.interfaceName))" }

    /// Holds every pair's worker, enabled or not (pair 0's first: it serves
    /// the control queue, so the active pair count cannot change after
    /// it), and returns every running queue's walking state with the MAC,
    /// the pair counts and the MTU.
    public func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot {
        let (queues, activePairs) = active.withLock { (workers) -> ([Int: VirtqueueState], Int) in
            var queues: [Int: VirtqueueState] = [:]
            var pairs: NetPairs?
            for worker in workers {
                worker.plane.withLock { plane in
                    queues.merge(plane.suspend()) { _, new in new }
                    if plane.pair == 0 { pairs = plane.pairs }
                }
            }
            return (queues, pairs?.active.load(ordering: .acquiring) ?? 1)
        }
        var encoder = StateEncoder()
        NetSnapshotState(mac: mac.octets, queuePairs: queuePairs, activePairs: activePairs, mtu: mtu).encode(into: &encoder)
        return VirtioDeviceSnapshot(queues: queues, device: encoder.bytes)
    }

    public func resumeAfterSnapshot() {
        active.withLock { active in
            for worker in active { worker.plane.withLock { $0.unsuspend() } }
        }
    }

    /// Refuses another MAC, pair count or MTU than configured; otherwise
    /// keeps the active pair count for the activation the transport makes
    /// next, so the pairs beyond it start detached as after VQ_PAIRS_SET.
    public func restoreSnapshot(device state: [UInt8]) throws(VirtioDeviceError) {
        var decoder = StateDecoder(state)
        let saved: NetSnapshotState
        do {
            saved = try NetSnapshotState.decode(from: &decoder)
            try decoder.finish()
        } catch {
            throw .snapshotState(device: snapshotName, cause: error)
        }
        guard saved.mac == mac.octets else {
            throw .snapshotMismatch(device: snapshotName, part: "the MAC address",
                                    saved: saved.mac.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":"), configured: "\(mac)")
        }
        guard saved.queuePairs == queuePairs else {
            throw .snapshotMismatch(device: snapshotName, part: "the number of queue pairs (queues=)",
                                    saved: "\(saved.queuePairs)", configured: "\(queuePairs)")
        }
        guard saved.mtu == mtu else {
            throw .snapshotMismatch(device: snapshotName, part: "the MTU (mtu=)",
                                    saved: saved.mtu.map { "\($0)" } ?? "none", configured: mtu.map { "\($0)" } ?? "none")
        }
        restoredActivePairs.withLock { $0 = saved.activePairs }
    }
}
