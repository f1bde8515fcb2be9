import Synchronization
import Virtio

/// A device that records what a transport does to it: two queues (16 and 8
/// entries), EVENT_IDX and device feature bit 5, a configuration space that
/// reads as its own offsets.
public final class FakeDevice: VirtioDevice {
    public let deviceType = VirtioDeviceType.entropy
    public let queueMaximumSizes: [UInt16] = [16, 8]
    /// EVENT_IDX and device feature bit 5.
    public let offeredFeatures: UInt64 = VirtioFeature.eventIndex | 1 << 5
    public let counters = VirtioCounters()
    let failActivation: Bool
    private let state = Mutex<(activations: [VirtioActivation], resets: Int, configurationWrites: [(UInt64, [UInt8])])>(([], 0, []))

    public init(failActivation: Bool = false) {
        self.failActivation = failActivation
    }

    public func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = UInt8(truncatingIfNeeded: offset &+ UInt64(index)) }
    }

    public func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {
        state.withLock { $0.configurationWrites.append((offset, Array(data))) }
    }

    public func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {
        state.withLock { $0.activations.append(activation) }
        if failActivation { throw .activation(device: "fake", step: "testing", cause: "asked to fail") }
    }

    public func reset() { state.withLock { $0.resets += 1 } }

    /// What `suspendForSnapshot` reports (tests set it), and what the device got back.
    private let snapshot = Mutex<(queues: [Int: VirtqueueState], suspends: Int, resumes: Int, restored: [UInt8]?)>(([:], 0, 0, nil))
    /// The device's own state in its snapshots.
    public static let snapshotBytes: [UInt8] = [0xFA, 0x4E]

    public func setSnapshotQueues(_ queues: [Int: VirtqueueState]) { snapshot.withLock { $0.queues = queues } }

    public func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot {
        snapshot.withLock { state in
            state.suspends += 1
            return VirtioDeviceSnapshot(queues: state.queues, device: Self.snapshotBytes)
        }
    }

    public func resumeAfterSnapshot() { snapshot.withLock { $0.resumes += 1 } }

    public func restoreSnapshot(device bytes: [UInt8]) throws(VirtioDeviceError) {
        guard bytes == Self.snapshotBytes else { throw .snapshotMismatch(device: "fake", part: "state", saved: "\(bytes)", configured: "\(Self.snapshotBytes)") }
        snapshot.withLock { $0.restored = bytes }
    }

    public var snapshotSuspends: Int { snapshot.withLock { $0.suspends } }
    public var snapshotResumes: Int { snapshot.withLock { $0.resumes } }
    public var restoredSnapshot: [UInt8]? { snapshot.withLock { $0.restored } }

    public var activations: [VirtioActivation] { state.withLock { $0.activations } }
    public var resets: Int { state.withLock { $0.resets } }
    public var configurationWrites: [(offset: UInt64, bytes: [UInt8])] { state.withLock { $0.configurationWrites.map { ($0.0, $0.1) } } }
}

/// Collects the lines a transport logs.
/// A monotonic clock tests move by hand (for `DeviceEventLog` intervals).
public final class ManualClock: Sendable {
    let nanoseconds = Atomic<UInt64>(1_000_000_000)
    public init() {}
    public var now: @Sendable () -> UInt64 { { [self] in nanoseconds.load(ordering: .relaxed) } }
    public func advance(seconds: UInt64) { nanoseconds.add(seconds * 1_000_000_000, ordering: .relaxed) }
}

public final class LogCollector: Sendable {
    let lines = Mutex<[String]>([])
    public init() {}
    public var recorded: [String] { lines.withLock { $0 } }
    public var sink: @Sendable (String) -> Void { { [self] line in lines.withLock { $0.append(line) } } }
}
