import SnapshotFormat
import Virtio

extension RequestQueue {
    /// Stops serving for a snapshot; the lock is the worker's for a whole
    /// pass, which completes every request it takes, so nothing is in
    /// flight once it is ours. A request the limiter deferred was taken but
    /// not served: the saved state steps back over it.
    func suspend() -> VirtqueueState {
        state.withLock { state in
            state.suspended = true
            var walk = state.queue.walkState
            if state.deferred != nil { walk.nextAvailable &-= 1 }
            return walk
        }
    }

    func unsuspend() {
        state.withLock { $0.suspended = false }
        // Notifications taken while held were not served: look again.
        try? notification.signal()
    }
}

extension VirtioRNG {
    /// virtio-rng has no state of its own: an empty `VRNG` section.
    public static let snapshotTag = SectionTag("VRNG")

    public func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot {
        let queues = running.withLock { running -> [Int: VirtqueueState] in
            guard let running else { return [:] }
            return [running.queue.index: running.queue.suspend()]
        }
        var encoder = StateEncoder()
        encoder.section(Self.snapshotTag) { _ in }
        return VirtioDeviceSnapshot(queues: queues, device: encoder.bytes)
    }

    public func resumeAfterSnapshot() {
        running.withLock { $0?.queue.unsuspend() }
    }

    public func restoreSnapshot(device state: [UInt8]) throws(VirtioDeviceError) {
        var decoder = StateDecoder(state)
        do {
            try decoder.section(Self.snapshotTag) { (_: inout StateDecoder) throws(StateDecodingError) in }
            try decoder.finish()
        } catch {
            throw .snapshotState(device: "\(deviceType)", cause: error)
        }
    }
}
