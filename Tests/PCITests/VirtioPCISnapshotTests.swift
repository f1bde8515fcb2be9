import GuestMemory
import PCI
import SnapshotFormat
import Testing
import Virtio
import VirtioPCI
import VirtioTestSupport

@Suite("virtio-pci function snapshots")
struct VirtioPCISnapshotTests {
    static let movedBAR: UInt64 = 0xC010_0000

    /// A function whose driver moved BAR 0, set the interrupt line, enabled
    /// MSI-X with vectors 0 and 1 programmed (1 masked and pending),
    /// assigned them, and set DRIVER_OK with queue 0 running.
    static func programmed() throws -> VirtioPCITransportTests {
        let fixture = try VirtioPCITransportTests()
        let transport = fixture.transport
        transport.writeConfiguration(PCIRegister.bar0, size: 4, UInt32(movedBAR))
        transport.writeConfiguration(PCIRegister.interruptLine, size: 1, 11)
        let msix = try #require(transport.capabilities(id: PCICapabilityID.msix).first)
        transport.writeConfiguration(msix + 2, size: 2, UInt32(MSIXTable.enableBit))
        for vector in 0..<2 {
            transport.write(0x4000 + UInt64(16 * vector), size: 4, 0xFEE0_0000)
            transport.write(0x4000 + UInt64(16 * vector) + 8, size: 4, UInt64(0x40 + vector))
            transport.write(0x4000 + UInt64(16 * vector) + 12, size: 4, UInt64(vector))
        }
        fixture.write(Field.configVector, 1)
        fixture.negotiate(VirtioFeature.version1 | VirtioFeature.eventIndex)
        fixture.setUpQueue(0, DriverQueue(memory: fixture.memory, size: 16))
        fixture.write(Field.queueVector, 0)
        fixture.driverOK()
        transport.signalConfigurationChange()  // vector 1 is masked: pending
        return fixture
    }

    static func encoded(_ snapshot: VirtioPCISnapshot) -> [UInt8] {
        var encoder = StateEncoder()
        snapshot.encode(into: &encoder)
        return encoder.bytes
    }

    static func decode(_ bytes: [UInt8], into transport: VirtioPCITransport) throws(StateDecodingError) -> VirtioPCISnapshot {
        var decoder = StateDecoder(bytes)
        let header = try VirtioPCISnapshot.decodeHeader(from: &decoder)
        let snapshot = try transport.decodeSnapshotBody(&decoder, slot: header.slot, deviceType: header.deviceType)
        try decoder.finish()
        return snapshot
    }

    @Test("a programmed function's snapshot decodes unchanged; restored into a fresh function the BAR, interrupt line, MSI-X table, pending bit, vectors and routes come back and the device runs from the saved queue indexes, without a reset")
    func roundTrip() throws {
        let source = try Self.programmed()
        let walk = VirtqueueState(nextAvailable: 9, nextUsed: 7, usedAtLastInterruptCheck: 7)
        source.device.setSnapshotQueues([0: walk])
        let snapshot = try source.transport.captureSnapshot()
        #expect(snapshot.msix.pending == [false, true, false])
        #expect(snapshot.configurationVector == 1 && snapshot.queueVectors == [0, 0xFFFF])

        let target = try VirtioPCITransportTests()
        let decoded = try Self.decode(Self.encoded(snapshot), into: target.transport)
        #expect(decoded == snapshot)
        try target.transport.restore(decoded)
        #expect(target.transport.mappedBARAddress == Self.movedBAR)
        #expect(target.transport.readConfiguration(PCIRegister.interruptLine, size: 1) == 11)
        #expect(target.transport.read(0x4000, size: 16) == source.transport.read(0x4000, size: 16))
        #expect(target.transport.read(0x6000, size: 8) == 0b10, "vector 1 still pending")
        #expect(target.read(Field.configVector) == 1 && target.read(Field.status) == UInt64(source.status))
        #expect(target.router.recorded.map(\.gsi) == [24], "the deliverable vector's route is installed")
        #expect(target.device.resets == 0)
        let activation = try #require(target.device.activations.first)
        #expect(activation.queues.first?.queue.walkState == walk)
        #expect(target.platform.notifierAddresses == [Self.movedBAR + 0x3000], "queue 0's doorbell at the moved BAR")
        // Unmasking the pending vector sends it, as on the source.
        target.transport.write(0x4000 + 16 + 12, size: 4, 0)
        #expect(target.lines[1].value == 1)
    }

    @Test("truncated state, a foreign configuration space, an out-of-range vector and a bad MSI-X entry are refused with typed errors")
    func refusals() throws {
        let source = try Self.programmed()
        let snapshot = try source.transport.captureSnapshot()
        let bytes = Self.encoded(snapshot)
        let target = try VirtioPCITransportTests()
        for length in [0, 2, 100, bytes.count - 1] {
            #expect(throws: StateDecodingError.self, "\(length) bytes") { _ = try Self.decode(Array(bytes.prefix(length)), into: target.transport) }
        }
        var vector = snapshot
        vector.queueVectors[1] = 3
        #expect(throws: StateDecodingError.self) { _ = try Self.decode(Self.encoded(vector), into: target.transport) }
        var entry = snapshot
        entry.msix.table[15] = 1
        #expect(throws: StateDecodingError.self) { _ = try Self.decode(Self.encoded(entry), into: target.transport) }
        var odd = snapshot
        odd.transport.queues[0].size = 12
        #expect(throws: StateDecodingError.self) { _ = try Self.decode(Self.encoded(odd), into: target.transport) }
        var foreign = snapshot
        foreign.configuration[PCIRegister.deviceID] ^= 1
        #expect(throws: VirtioPCISnapshotError.self) { try target.transport.restore(foreign) }
        #expect(target.device.activations.isEmpty)
    }
}
