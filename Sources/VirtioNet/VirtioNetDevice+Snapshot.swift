import SnapshotFormat
import Virtio

extension NetDataPlane {
    /// Holds the plane for a snapshot (the caller has its lock, which the
    /// worker holds for a whole wake-up) and returns the queues' walking
    /// state. RX chains taken ahead of frames (`spare`) and a TX chain the
    /// limiter deferred were taken but not used: the saved state steps back
    /// over them, so a restored device takes them again. A frame read from
    /// the tap and not yet delivered stays with this plane; a restored
    /// device never sees it (a lost frame, which networks tolerate).
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
        return states
    }

    mutating func unsuspend() {
        guard suspended else { return }
        suspended = false
        setTapWatched(tapWatchedBeforeSuspend)
        // Wakes the worker: it applies updates and serves both queues.
        try? updateEvent?.signal()
    }
}

/// What virtio-net keeps in a snapshot besides its queues: the MAC address
/// the guest read (a restore with another configured MAC is refused).
public struct NetSnapshotState: Sendable, Equatable {
    public var mac: [UInt8]

    public static let tag = SectionTag("VNET")

    public func encode(into encoder: inout StateEncoder) {
        encoder.section(Self.tag) { $0.encode(bytes: mac) }
    }

    public static func decode(from decoder: inout StateDecoder) throws(StateDecodingError) -> NetSnapshotState {
        try decoder.section(tag) { (decoder) throws(StateDecodingError) in
            let start = decoder.offset
            let mac = try decoder.decodeBytes(maximumLength: 6)
            guard mac.count == 6 else { throw .invalidValue(offset: start, what: "MAC address of \(mac.count) bytes") }
            return NetSnapshotState(mac: mac)
        }
    }
}

extension VirtioNetDevice {
    /// A device with several queue pairs is refused (its pairs, the active
    /// count and the control queue are not saved yet) rather than saved wrong.
    public func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot {
        guard taps.count == 1 else {
            throw .snapshotUnsupported(device: "virtio-net (\(tap.label)) with \(taps.count) queue pairs (queues=\(taps.count))")
        }
        guard mtu == nil else {
            // The VM's saved configuration has no MTU yet: a restored device would not offer it.
            throw .snapshotUnsupported(device: "virtio-net (\(tap.label)) with mtu=\(mtu ?? 0)")
        }
        let queues = active.withLock { active in active.first?.plane.withLock { $0.suspend() } } ?? [:]
        var encoder = StateEncoder()
        NetSnapshotState(mac: mac.octets).encode(into: &encoder)
        return VirtioDeviceSnapshot(queues: queues, device: encoder.bytes)
    }

    public func resumeAfterSnapshot() {
        active.withLock { active in
            for worker in active { worker.plane.withLock { $0.unsuspend() } }
        }
    }

    public func restoreSnapshot(device state: [UInt8]) throws(VirtioDeviceError) {
        guard taps.count == 1 else {
            throw .snapshotUnsupported(device: "virtio-net (\(tap.label)) with \(taps.count) queue pairs (queues=\(taps.count))")
        }
        var decoder = StateDecoder(state)
        let saved: NetSnapshotState
        do {
            saved = try NetSnapshotState.decode(from: &decoder)
            try decoder.finish()
        } catch {
            throw .snapshotState(device: "virtio-net (\(tap.label))", cause: error)
        }
        guard saved.mac == mac.octets else {
            throw .snapshotMismatch(device: "virtio-net (\(tap.label))", part: "the MAC address",
                                    saved: saved.mac.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":"), configured: "\(mac)")
        }
    }
}
