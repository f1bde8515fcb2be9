import GuestMemory
import SnapshotFormat
import Testing
import VirtioTestSupport
@testable import Virtio

@Suite("virtio transport and queue snapshot state")
struct VirtioSnapshotStateTests {
    static let offered = VirtioFeature.version1 | VirtioFeature.eventIndex | 1 << 5
    static let maximumSizes: [UInt16] = [16, 8]

    static func running() -> VirtioTransportState {
        var first = VirtioQueueRegisters(size: 16)
        first.enabled = true
        first.descriptorTable = 0x10000
        first.driverArea = 0x10100
        first.deviceArea = 0x10200
        return VirtioTransportState(
            deviceFeatureSelect: 1, driverFeatureSelect: 1, driverFeatures: VirtioFeature.version1 | VirtioFeature.eventIndex,
            status: VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK,
            queueSelect: 1, queues: [first, VirtioQueueRegisters(size: 8)], active: true,
            queueStates: [VirtqueueState(nextAvailable: 70, nextUsed: 68, usedAtLastInterruptCheck: 67), nil])
    }

    static func encoded(_ state: VirtioTransportState) -> [UInt8] {
        var encoder = StateEncoder()
        state.encode(into: &encoder)
        return encoder.bytes
    }

    static func decode(_ bytes: [UInt8]) throws(StateDecodingError) -> VirtioTransportState {
        var decoder = StateDecoder(bytes)
        let state = try VirtioTransportState.decode(from: &decoder, queueMaximumSizes: maximumSizes, offeredFeatures: offered)
        try decoder.finish()
        return state
    }

    @Test("a running transport's registers and queue walking state encode and decode to the same value")
    func roundTrip() throws {
        #expect(try Self.decode(Self.encoded(Self.running())) == Self.running())
    }

    @Test("every truncation of the state is refused with a typed error")
    func truncated() {
        let bytes = Self.encoded(Self.running())
        for length in 0..<bytes.count {
            #expect(throws: StateDecodingError.self, "\(length) bytes") { _ = try Self.decode(Array(bytes.prefix(length))) }
        }
    }

    @Test("guest-controlled values the registers could never hold are refused", arguments: [
        "size 12", "size over maximum", "features not offered", "driverOK without featuresOK", "active without driverOK",
        "walk for a stopped queue", "too many in flight", "needs reset in status", "queue count",
    ])
    func refusesOutOfRange(kind: String) {
        var state = Self.running()
        switch kind {
        case "size 12": state.queues[0].size = 12
        case "size over maximum": state.queues[1].size = 16
        case "features not offered": state.driverFeatures |= 1 << 7
        case "driverOK without featuresOK": state.status &= ~VirtioStatus.featuresOK
        case "active without driverOK": state.status &= ~VirtioStatus.driverOK
        case "walk for a stopped queue": state.queueStates[1] = VirtqueueState(nextAvailable: 0, nextUsed: 0, usedAtLastInterruptCheck: 0)
        case "too many in flight": state.queueStates[0] = VirtqueueState(nextAvailable: 40, nextUsed: 20, usedAtLastInterruptCheck: 20)
        case "needs reset in status": state.status |= VirtioStatus.deviceNeedsReset
        case "queue count":
            state.queues.append(VirtioQueueRegisters(size: 8))
            state.queueStates.append(nil)
        default: Issue.record("unknown case \(kind)")
        }
        #expect(throws: StateDecodingError.self) { _ = try Self.decode(Self.encoded(state)) }
    }

    @Test("a queue's walking state comes back into a fresh Virtqueue, and the core's registers into a fresh core")
    func restoresIntoFreshValues() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)])
        let driver = DriverQueue(memory: memory, size: 16)
        var queue = try Virtqueue(configuration: driver.configuration, maximumSize: 16, features: VirtioFeature.eventIndex, memory: memory)
        let walk = VirtqueueState(nextAvailable: 0xFFFF, nextUsed: 0xFFFE, usedAtLastInterruptCheck: 0xFFFD)
        queue.restore(walk)
        #expect(queue.walkState == walk)

        var core = VirtioTransportCore(device: FakeDevice())
        let saved = Self.running()
        core.restoreRegisters(saved)
        let savedWalk = try #require(saved.queueStates[0])
        #expect(core.savedState(VirtioDeviceSnapshot(queues: [0: savedWalk])).queues == saved.queues)
        #expect(core.status == saved.status && core.driverFeatures == saved.driverFeatures && !core.active)
    }
}
