import SnapshotFormat
import Virtio

extension ConsoleDevice {
    /// `VCON`: the configuration space the guest read (fixed here: no SIZE,
    /// one port), checked on restore. Typed input not yet delivered is host
    /// input and is not kept.
    public static let snapshotTag = SectionTag("VCON")

    var configurationBytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 12)
        // SAFETY: the buffer is `bytes`' own storage, used only within the call.
        bytes.withUnsafeMutableBytes { readConfiguration(offset: 0, into: $0) }
        return bytes
    }

    /// Takes the worker's lock, which it holds for a whole pass (every chain
    /// it takes is completed within it), and holds the queues until resumed.
    public func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot {
        let box = runningQueues.withLock { $0 }
        let queues = box?.state.withLock { queues -> [Int: VirtqueueState] in
            queues.suspended = true
            var states: [Int: VirtqueueState] = [:]
            for entry in [queues.receive, queues.transmit].compactMap({ $0 }) { states[entry.index] = entry.queue.walkState }
            return states
        } ?? [:]
        var encoder = StateEncoder()
        let configuration = configurationBytes
        encoder.section(Self.snapshotTag) { $0.encode(bytes: configuration) }
        return VirtioDeviceSnapshot(queues: queues, device: encoder.bytes)
    }

    public func resumeAfterSnapshot() {
        runningQueues.withLock { $0 }?.state.withLock { $0.suspended = false }
        // Wakes the worker to serve what came while held.
        try? inputEvent.signal()
    }

    public func restoreSnapshot(device state: [UInt8]) throws(VirtioDeviceError) {
        var decoder = StateDecoder(state)
        let saved: [UInt8]
        do {
            saved = try decoder.section(Self.snapshotTag) { (decoder) throws(StateDecodingError) in try decoder.decodeBytes(maximumLength: 64) }
            try decoder.finish()
        } catch {
            throw .snapshotState(device: "virtio-console", cause: error)
        }
        guard saved == configurationBytes else {
            throw .snapshotMismatch(device: "virtio-console", part: "the configuration space", saved: "\(saved)", configured: "\(configurationBytes)")
        }
    }
}
