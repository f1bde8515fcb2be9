import GuestMemory
import HostSystem
import SnapshotFormat
import Testing
import Virtio
import VirtioMMIO
import VirtioTestSupport

@Suite("virtio-mmio transport snapshots")
struct VirtioMMIOSnapshotTests {
    /// A transport whose driver negotiated, set up queue 0 and set DRIVER_OK.
    static func running(_ memory: GuestMemory) throws -> (VirtioMMIOTransportTests, DriverQueue) {
        let driven = try VirtioMMIOTransportTests()
        let queue = DriverQueue(memory: driven.memory, size: 16)
        driven.negotiate(VirtioFeature.version1 | VirtioFeature.eventIndex)
        driven.setUpQueue(0, queue)
        driven.driverOK()
        return (driven, queue)
    }

    static func encoded(_ snapshot: VirtioMMIOSnapshot) -> [UInt8] {
        var encoder = StateEncoder()
        snapshot.encode(into: &encoder)
        return encoder.bytes
    }

    static func decode(_ bytes: [UInt8], into transport: VirtioMMIOTransport) throws(StateDecodingError) -> VirtioMMIOSnapshot {
        var decoder = StateDecoder(bytes)
        let header = try VirtioMMIOSnapshot.decodeHeader(from: &decoder)
        let snapshot = try transport.decodeSnapshotBody(&decoder, base: header.base, deviceType: header.deviceType)
        try decoder.finish()
        return snapshot
    }

    @Test("a running device's snapshot decodes unchanged; restored into a fresh transport it runs again from the saved queue indexes, notifiers registered, without a reset")
    func roundTrip() throws {
        let (source, _) = try Self.running(try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)]))
        let walk = VirtqueueState(nextAvailable: 300, nextUsed: 299, usedAtLastInterruptCheck: 299)
        source.device.setSnapshotQueues([0: walk])
        source.write(R.queueSelect, 1)
        let snapshot = try source.transport.captureSnapshot()
        #expect(source.device.snapshotSuspends == 1)
        source.transport.resumeAfterSnapshot()
        #expect(source.device.snapshotResumes == 1)
        #expect(snapshot.transport.active && snapshot.transport.queueStates[0] == walk && snapshot.device == FakeDevice.snapshotBytes)

        let target = try VirtioMMIOTransportTests()
        let decoded = try Self.decode(Self.encoded(snapshot), into: target.transport)
        #expect(decoded == snapshot)
        try target.transport.restore(decoded)
        #expect(target.device.restoredSnapshot == FakeDevice.snapshotBytes)
        #expect(target.device.resets == 0, "a restore is not a reset")
        let activation = try #require(target.device.activations.first)
        #expect(activation.queues.map(\.index) == [0])
        #expect(activation.queues.first?.queue.walkState == walk)
        #expect(activation.features == VirtioFeature.version1 | VirtioFeature.eventIndex)
        #expect(target.transport.isActive && target.status == source.status)
        #expect(target.platform.registered.map(\.queue) == [0], "queue 0's ioeventfd is registered as after DRIVER_OK")
        #expect(try activation.queues[0].notification.consume() == 1, "the restored queue was notified once, to serve what was made available")
    }

    @Test("a device saved while it needed a reset comes back with DEVICE_NEEDS_RESET and is not started; the driver's reset then works")
    func needsResetStaysStopped() throws {
        let (source, _) = try Self.running(try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)]))
        source.transport.reportDeviceError("broken queue (test)")
        let snapshot = try source.transport.captureSnapshot()
        #expect(snapshot.needsReset)
        let target = try VirtioMMIOTransportTests()
        try target.transport.restore(snapshot)
        #expect(target.status & VirtioStatus.deviceNeedsReset != 0)
        #expect(target.device.activations.isEmpty && !target.transport.isActive)
        target.write(R.status, 0)
        #expect(target.status == 0 && target.device.resets == 1)
    }

    @Test("a truncated snapshot and a queue size that is not a power of two are refused with typed errors")
    func refusesBadState() throws {
        let (source, _) = try Self.running(try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)]))
        let snapshot = try source.transport.captureSnapshot()
        let bytes = Self.encoded(snapshot)
        let target = try VirtioMMIOTransportTests()
        for length in [0, 9, bytes.count / 2, bytes.count - 1] {
            #expect(throws: StateDecodingError.self, "\(length) bytes") { _ = try Self.decode(Array(bytes.prefix(length)), into: target.transport) }
        }
        var odd = snapshot
        odd.transport.queues[0].size = 12
        #expect(throws: StateDecodingError.self) { _ = try Self.decode(Self.encoded(odd), into: target.transport) }
        var badInterrupt = snapshot
        badInterrupt.interruptStatus = 0x80
        #expect(throws: StateDecodingError.self) { _ = try Self.decode(Self.encoded(badInterrupt), into: target.transport) }
        #expect(target.device.activations.isEmpty)
    }
}
