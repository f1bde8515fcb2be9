import Devices
import GuestMemory
import HostSystem
import PCI
import Synchronization
import Testing
import Virtio
import VirtioPCI
import VirtioTestSupport

typealias Common = (offset: UInt64, size: Int)

/// The common configuration fields, as a driver addresses them.
enum Field {
    static let deviceFeatureSelect: Common = (0x00, 4)
    static let deviceFeature: Common = (0x04, 4)
    static let driverFeatureSelect: Common = (0x08, 4)
    static let driverFeature: Common = (0x0C, 4)
    static let configVector: Common = (0x10, 2)
    static let numberOfQueues: Common = (0x12, 2)
    static let status: Common = (0x14, 1)
    static let generation: Common = (0x15, 1)
    static let queueSelect: Common = (0x16, 2)
    static let queueSize: Common = (0x18, 2)
    static let queueVector: Common = (0x1A, 2)
    static let queueEnable: Common = (0x1C, 2)
    static let queueNotifyOffset: Common = (0x1E, 2)
    static let queueDescriptor: Common = (0x20, 8)
    static let queueDriver: Common = (0x28, 8)
    static let queueDevice: Common = (0x30, 8)
}

@Suite("virtio-pci modern transport")
struct VirtioPCITransportTests {
    static let bar: UInt64 = 0xC000_0000
    let memory: GuestMemory
    let device: FakeDevice
    let platform = FakePlatform()
    let router = RecordingRouter()
    let lines = [CountingLine(), CountingLine(), CountingLine()]
    let intx = RecordingLevel()
    let log = LogCollector()
    let clock = ManualClock()
    let transport: VirtioPCITransport

    init() throws {
        try self.init(device: FakeDevice())
    }

    init(device: FakeDevice) throws {
        self.device = device
        memory = try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)])
        transport = try VirtioPCITransport(
            device: device, address: PCIAddress(device: 1)!, barAddress: Self.bar, memory: memory, platform: platform,
            msixVectors: lines.enumerated().map { MSIVector(gsi: 24 + UInt32($0.offset), line: $0.element) },
            router: router, intx: intx, log: log.sink, clock: clock.now)
    }

    // MARK: Driver actions

    func read(_ field: Common) -> UInt64 { transport.read(field.offset, size: field.size) }
    func write(_ field: Common, _ value: UInt64) {
        if field.size == 8 {
            transport.write(field.offset, size: 4, value & 0xFFFF_FFFF)
            transport.write(field.offset + 4, size: 4, value >> 32)
        } else {
            transport.write(field.offset, size: field.size, value)
        }
    }
    var status: UInt8 { UInt8(read(Field.status)) }

    /// ACKNOWLEDGE, DRIVER, the features, FEATURES_OK; returns the status read back.
    @discardableResult
    func negotiate(_ features: UInt64) -> UInt8 {
        write(Field.status, UInt64(VirtioStatus.acknowledge))
        write(Field.status, UInt64(VirtioStatus.acknowledge | VirtioStatus.driver))
        write(Field.driverFeatureSelect, 0)
        write(Field.driverFeature, features & 0xFFFF_FFFF)
        write(Field.driverFeatureSelect, 1)
        write(Field.driverFeature, features >> 32)
        write(Field.status, UInt64(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK))
        return status
    }

    func setUpQueue(_ index: UInt16, _ queue: DriverQueue) {
        write(Field.queueSelect, UInt64(index))
        write(Field.queueSize, UInt64(queue.size))
        write(Field.queueDescriptor, queue.configuration.descriptorTable.rawValue)
        write(Field.queueDriver, queue.configuration.availableRing.rawValue)
        write(Field.queueDevice, queue.configuration.usedRing.rawValue)
        write(Field.queueEnable, 1)
    }

    func driverOK() {
        write(Field.status, UInt64(status | VirtioStatus.driverOK))
    }

    // MARK: Tests

    @Test("the function is a modern virtio device: IDs, revision 1, class, subsystem, INTA")
    func identity() {
        #expect(transport.readConfiguration(0, size: 4) == 0x1044_1AF4)
        #expect(transport.readConfiguration(PCIRegister.revisionID, size: 1) == 1)
        #expect(transport.readConfiguration(PCIRegister.classCode, size: 3) == 0xFF_00_00)
        #expect(transport.readConfiguration(PCIRegister.subsystemVendorID, size: 2) == 0x1AF4)
        #expect(transport.readConfiguration(PCIRegister.subsystemID, size: 2) >= 0x40)
        #expect(transport.readConfiguration(PCIRegister.interruptPin, size: 1) == 1)
        #expect(transport.readConfiguration(PCIRegister.bar0, size: 4) == UInt32(Self.bar))
        #expect(transport.readConfiguration(PCIRegister.command, size: 2) & UInt32(PCICommand.memorySpace) != 0)
    }

    @Test("vendor capabilities point into BAR 0 at the common, ISR, device, notify and PCI-access structures")
    func capabilities() {
        let virtio = transport.capabilities(id: PCICapabilityID.vendorSpecific)
        let types = virtio.map { transport.readConfiguration($0 + 3, size: 1) }
        #expect(types == [1, 3, 4, 2, 5])
        for offset in virtio { #expect(transport.readConfiguration(offset + 4, size: 1) == 0, "BAR") }
        let layout = virtio.map { (transport.readConfiguration($0 + 8, size: 4), transport.readConfiguration($0 + 12, size: 4)) }
        #expect(layout[0] == (0x0000, 0x3C) && layout[1] == (0x1000, 1) && layout[2] == (0x2000, 0x1000))
        #expect(layout[3] == (0x3000, 8), "two queues, 4 bytes apart")
        #expect(transport.readConfiguration(virtio[3] + 2, size: 1) == 20 && transport.readConfiguration(virtio[3] + 16, size: 4) == 4)
        let msix = transport.capabilities(id: PCICapabilityID.msix)
        #expect(msix.count == 1)
        #expect(transport.readConfiguration(msix[0] + 2, size: 2) == 2, "3 vectors")
        #expect(transport.readConfiguration(msix[0] + 4, size: 4) == 0x4000 && transport.readConfiguration(msix[0] + 8, size: 4) == 0x6000)
    }

    @Test("BAR 0 is on the bus at its address; device configuration reads go to the device")
    func barMapping() {
        #expect(transport.mappedBARAddress == Self.bar)
        var bytes = [UInt8](repeating: 0, count: 2)
        #expect(bytes.withUnsafeMutableBytes { platform.bus.read(Self.bar + 0x12, into: $0) })
        #expect(bytes == [2, 0], "num_queues")
        #expect(transport.read(0x2000 + 5, size: 2) == 0x0605)
        #expect(read(Field.numberOfQueues) == 2)
    }

    @Test("device features are offered in two words with VERSION_1; RING_PACKED never")
    func deviceFeatures() {
        write(Field.deviceFeatureSelect, 0)
        #expect(read(Field.deviceFeature) == UInt64(1 << 29 | 1 << 5))
        write(Field.deviceFeatureSelect, 1)
        #expect(read(Field.deviceFeature) == 1)
        write(Field.deviceFeatureSelect, 2)
        #expect(read(Field.deviceFeature) == 0)
        #expect(transport.offeredFeatures == VirtioFeature.version1 | VirtioFeature.eventIndex | 1 << 5)
    }

    @Test("FEATURES_OK sticks for offered features with VERSION_1; the driver's features then freeze")
    func acceptedFeatures() {
        let result = negotiate(VirtioFeature.version1 | VirtioFeature.eventIndex)
        #expect(result & VirtioStatus.featuresOK != 0)
        write(Field.driverFeatureSelect, 0)
        write(Field.driverFeature, 0)
        #expect(read(Field.driverFeature) == UInt64(VirtioFeature.eventIndex), "features are fixed after FEATURES_OK")
        #expect(log.recorded.isEmpty)
    }

    @Test("a legacy-only driver (no VERSION_1) is refused: FEATURES_OK stays clear, one log line says why")
    func legacyDriverRefused() {
        let result = negotiate(VirtioFeature.eventIndex)
        #expect(result & VirtioStatus.featuresOK == 0)
        #expect(log.recorded.count == 1)
        #expect(log.recorded.first?.contains("legacy") == true && log.recorded.first?.contains("virtio-rng at PCI 00:01.0") == true)
        driverOK()
        #expect(status & VirtioStatus.driverOK == 0)
        #expect(device.activations.isEmpty)
    }

    @Test("features the device did not offer are refused")
    func unofferedFeatures() {
        #expect(negotiate(VirtioFeature.version1 | 1 << 7) & VirtioStatus.featuresOK == 0)
        #expect(negotiate(VirtioFeature.version1 | VirtioFeature.ringPacked) & VirtioStatus.featuresOK == 0)
    }

    @Test("status: DRIVER_OK needs FEATURES_OK; bits are never cleared but by a reset to 0")
    func statusMachine() {
        write(Field.status, UInt64(VirtioStatus.acknowledge | VirtioStatus.driver))
        write(Field.status, UInt64(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.driverOK))
        #expect(status == VirtioStatus.acknowledge | VirtioStatus.driver)
        #expect(device.activations.isEmpty)
        write(Field.status, UInt64(VirtioStatus.acknowledge))
        #expect(status == VirtioStatus.acknowledge | VirtioStatus.driver, "clearing DRIVER is ignored")
        write(Field.status, UInt64(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.deviceNeedsReset))
        #expect(status & VirtioStatus.deviceNeedsReset == 0, "the driver cannot set DEVICE_NEEDS_RESET")
        write(Field.status, 0)
        #expect(status == 0 && device.resets == 1)
    }

    @Test("queue registers: sizes up to the maximum, absent queues read size 0, vectors only from the table")
    func queueRegisters() {
        write(Field.queueSelect, 1)
        #expect(read(Field.queueSize) == 8 && read(Field.queueNotifyOffset) == 1)
        write(Field.queueSize, 16)
        #expect(read(Field.queueSize) == 8, "above the maximum: ignored")
        write(Field.queueSize, 4)
        #expect(read(Field.queueSize) == 4)
        write(Field.queueVector, 2)
        #expect(read(Field.queueVector) == 2)
        write(Field.queueVector, 3)
        #expect(read(Field.queueVector) == 0xFFFF, "no such vector reads back NO_VECTOR")
        write(Field.configVector, 0)
        #expect(read(Field.configVector) == 0)
        write(Field.configVector, 0x1234)
        #expect(read(Field.configVector) == 0xFFFF)
        write(Field.queueDescriptor, 0x1_2345_6000)
        #expect(read(Field.queueDescriptor) == 0x1_2345_6000)
        transport.write(Field.queueDriver.offset, size: 8, 0xABCD_0000)
        #expect(read(Field.queueDriver) == 0xABCD_0000)
        transport.write(Field.queueDriver.offset + 1, size: 1, 0xEF)
        #expect(read(Field.queueDriver) == 0xABCD_EF00, "a partial write replaces only its bytes")
        write(Field.queueEnable, 1)
        write(Field.queueSize, 2)
        write(Field.queueDescriptor, 0)
        #expect(read(Field.queueSize) == 4 && read(Field.queueDescriptor) == 0x1_2345_6000, "an enabled queue is fixed")
        write(Field.queueSelect, 2)
        #expect(read(Field.queueSize) == 0 && read(Field.queueVector) == 0xFFFF && read(Field.queueEnable) == 0)
        write(Field.queueSize, 4)
        write(Field.queueEnable, 1)
        write(Field.queueVector, 1)
        write(Field.queueSelect, 0xFFFF)
        #expect(read(Field.queueSize) == 0)
        // Reads past the structure and in the gap before the ISR are zero.
        #expect(transport.read(0x3C, size: 4) == 0 && transport.read(0xFF0, size: 8) == 0)
    }

    @Test("DRIVER_OK activates the device with its enabled queues and a notifier on each doorbell")
    func activation() throws {
        let queue = DriverQueue(memory: memory, size: 16, base: GuestAddress(0x10000))
        negotiate(VirtioFeature.version1 | VirtioFeature.eventIndex)
        setUpQueue(0, queue)
        driverOK()
        #expect(status & VirtioStatus.driverOK != 0 && transport.isActive)
        let activation = try #require(device.activations.first)
        #expect(activation.features == VirtioFeature.version1 | VirtioFeature.eventIndex)
        #expect(activation.queues.map(\.index) == [0], "queue 1 was not enabled")
        #expect(activation.queues.first?.queue.configuration == queue.configuration)
        #expect(activation.queues.first?.queue.eventIndex == true)
        #expect(platform.notifierAddresses == [Self.bar + 0x3000])
        platform.guestNotify(Self.bar + 0x3000, queue: 0)
        #expect(try activation.queues[0].notification.consume() == 1)
        // A notification that reaches user space (here a 4-byte write) is passed on too.
        transport.write(0x3000, size: 4, 0)
        #expect(try activation.queues[0].notification.consume() == 1)
        transport.write(0x3004, size: 2, 1) // queue 1 is not running: nothing
        // Queue registers are fixed after DRIVER_OK.
        write(Field.queueSelect, 1)
        write(Field.queueEnable, 1)
        #expect(read(Field.queueEnable) == 0)
    }

    @Test("moving BAR 0 remaps it and its notifiers; turning memory decoding off unmaps both")
    func barMoves() throws {
        let queue = DriverQueue(memory: memory, size: 16, base: GuestAddress(0x10000))
        negotiate(VirtioFeature.version1)
        setUpQueue(0, queue)
        driverOK()
        let moved: UInt64 = 0xC010_0000
        transport.writeConfiguration(PCIRegister.command, size: 2, 0)
        #expect(transport.mappedBARAddress == nil && platform.notifierAddresses.isEmpty)
        // Sizing while decoding is off maps nothing.
        transport.writeConfiguration(PCIRegister.bar0, size: 4, 0xFFFF_FFFF)
        #expect(transport.readConfiguration(PCIRegister.bar0, size: 4) == 0xFFFF_8000)
        transport.writeConfiguration(PCIRegister.bar0, size: 4, UInt32(moved))
        transport.writeConfiguration(PCIRegister.command, size: 2, UInt32(PCICommand.memorySpace | PCICommand.busMaster))
        #expect(transport.mappedBARAddress == moved)
        #expect(platform.notifierAddresses == [moved + 0x3000])
        var byte = [UInt8](repeating: 0, count: 1)
        #expect(!byte.withUnsafeMutableBytes { platform.bus.read(Self.bar, into: $0) }, "the old range is free")
        #expect(byte.withUnsafeMutableBytes { platform.bus.read(moved + 0x14, into: $0) })
        #expect(byte[0] & VirtioStatus.driverOK != 0)
        let activation = try #require(device.activations.first)
        platform.guestNotify(moved + 0x3000, queue: 0)
        #expect(try activation.queues[0].notification.consume() == 1)
    }

    @Test("a BAR moved onto another device's range decodes nothing until moved away")
    func barOverlap() throws {
        try platform.bus.insert(PlainFunctionBusDevice(), base: 0xD000_0000, length: 0x1000)
        transport.writeConfiguration(PCIRegister.bar0, size: 4, 0xD000_0000)
        #expect(transport.mappedBARAddress == nil)
        transport.writeConfiguration(PCIRegister.bar0, size: 4, 0xD000_8000)
        #expect(transport.mappedBARAddress == 0xD000_8000)
    }

    @Test("reset (status 0) stops the device and returns every register to its initial value")
    func reset() throws {
        let queue = DriverQueue(memory: memory, size: 16, base: GuestAddress(0x10000))
        negotiate(VirtioFeature.version1)
        write(Field.configVector, 0)
        write(Field.queueSelect, 0)
        write(Field.queueVector, 1)
        setUpQueue(0, queue)
        driverOK()
        write(Field.status, 0)
        #expect(status == 0 && device.resets == 1 && !transport.isActive)
        #expect(platform.notifierAddresses.isEmpty)
        #expect(read(Field.queueSelect) == 0 && read(Field.queueSize) == 16 && read(Field.queueEnable) == 0)
        #expect(read(Field.queueDescriptor) == 0 && read(Field.queueVector) == 0xFFFF && read(Field.configVector) == 0xFFFF)
        write(Field.driverFeatureSelect, 1)
        #expect(read(Field.driverFeature) == 0)
        // And the device can be brought up again.
        negotiate(VirtioFeature.version1)
        setUpQueue(0, queue)
        driverOK()
        #expect(device.activations.count == 2)
    }

    @Test("a driver that breaks its rings, offers bad features and resets in a loop is counted every time but logged once per kind per interval")
    func boundedLog() {
        func round() {
            negotiate(VirtioFeature.version1)
            write(Field.queueSelect, 0)
            write(Field.queueSize, 16)
            write(Field.queueDescriptor, 0x7000_0000) // outside RAM
            write(Field.queueEnable, 1)
            driverOK()
            write(Field.status, 0)
            negotiate(VirtioFeature.eventIndex)  // legacy
            write(Field.status, 0)
            negotiate(VirtioFeature.version1 | 1 << 40)  // a feature never offered
            write(Field.status, 0)
        }
        for _ in 0..<50 { round() }
        #expect(log.recorded.count == 3, "\(log.recorded)")
        for kind in [DeviceEventKind.driverOKRefused, .legacyDriverRefused, .featuresRefused] {
            #expect(transport.events.count(kind) == 50, "\(kind)")
        }
        clock.advance(seconds: 9)
        round()
        #expect(log.recorded.count == 3, "still inside the interval")
        clock.advance(seconds: 1)
        round()
        #expect(log.recorded.count == 6)
        #expect(log.recorded.last?.hasSuffix("(50 more like this were not logged)") == true, "\(log.recorded)")
        let counters = Dictionary(uniqueKeysWithValues: transport.events.counters.map { ($0.name, $0.value) })
        #expect(counters["log_features_refused"] == 52 && counters["log_lines_suppressed"] == 150, "\(counters)")
    }

    @Test("a bad ring at DRIVER_OK sets DEVICE_NEEDS_RESET, logs one line and interrupts (INTx + ISR)")
    func badRing() throws {
        negotiate(VirtioFeature.version1)
        write(Field.queueSelect, 0)
        write(Field.queueSize, 16)
        write(Field.queueDescriptor, 0x7000_0000) // outside the 1 MiB of RAM
        write(Field.queueDriver, 0x2000)
        write(Field.queueDevice, 0x3000)
        write(Field.queueEnable, 1)
        let generation = read(Field.generation)
        driverOK()
        #expect(device.activations.isEmpty)
        #expect(status & VirtioStatus.deviceNeedsReset != 0)
        #expect(log.recorded.count == 1 && log.recorded[0].contains("virtio-rng at PCI 00:01.0: device needs reset: queue 0"))
        #expect(read(Field.generation) != generation)
        #expect(intx.isAsserted)
        #expect(transport.read(0x1000, size: 1) == UInt64(VirtioPCILayout.isrConfiguration))
        #expect(!intx.isAsserted && transport.read(0x1000, size: 1) == 0, "reading the ISR clears it")
        transport.reportDeviceError("again")
        #expect(log.recorded.count == 1, "reported once until reset")
        write(Field.status, 0)
        #expect(status == 0)
    }

    @Test("a device that fails to start is reported the same way")
    func activationFailure() throws {
        let fixture = try VirtioPCITransportTests(device: FakeDevice(failActivation: true))
        let queue = DriverQueue(memory: fixture.memory, size: 16, base: GuestAddress(0x10000))
        fixture.negotiate(VirtioFeature.version1)
        fixture.setUpQueue(0, queue)
        fixture.driverOK()
        #expect(fixture.status & VirtioStatus.deviceNeedsReset != 0)
        #expect(fixture.log.recorded.count == 1 && fixture.log.recorded[0].contains("asked to fail"))
    }

    @Test("with MSI-X on, queue and configuration interrupts go to their vectors; masked ones wait")
    func msixInterrupts() throws {
        let msix = try #require(transport.capabilities(id: PCICapabilityID.msix).first)
        transport.writeConfiguration(msix + 2, size: 2, UInt32(MSIXTable.enableBit))
        for vector in 0..<3 {
            transport.write(0x4000 + UInt64(16 * vector), size: 4, 0xFEE0_0000)
            transport.write(0x4000 + UInt64(16 * vector) + 8, size: 4, UInt64(0x30 + vector))
            transport.write(0x4000 + UInt64(16 * vector) + 12, size: 4, vector == 2 ? 1 : 0)
        }
        write(Field.configVector, 0)
        write(Field.queueSelect, 0)
        write(Field.queueVector, 1)
        write(Field.queueSelect, 1)
        write(Field.queueVector, 2)
        transport.signalUsedBuffers(queue: 0)
        transport.signalConfigurationChange()
        #expect(lines.map(\.value) == [1, 1, 0])
        transport.signalUsedBuffers(queue: 1)
        #expect(lines[2].value == 0 && transport.read(0x6000, size: 8) == 0b100, "vector 2 is masked: pending")
        transport.write(0x4000 + 32 + 12, size: 4, 0)
        #expect(lines[2].value == 1 && transport.read(0x6000, size: 8) == 0)
        #expect(!intx.isAsserted && transport.read(0x1000, size: 1) == 0, "MSI-X leaves INTx and the ISR alone")
        #expect(device.counters.interrupts.load(ordering: .relaxed) == 3)
        #expect(router.recorded.map(\.gsi).sorted() == [24, 25, 26])
        // A queue without a vector gets no interrupt.
        transport.signalUsedBuffers(queue: 5)
        #expect(lines.map(\.value) == [1, 1, 1])
    }

    @Test("with MSI-X off, interrupts raise INTx with ISR bit 0, unless the command register disables INTx")
    func intxInterrupts() {
        transport.signalUsedBuffers(queue: 0)
        #expect(intx.isAsserted)
        #expect(transport.read(0x1000, size: 1) == 1 && !intx.isAsserted)
        transport.writeConfiguration(PCIRegister.command, size: 2, UInt32(PCICommand.memorySpace | PCICommand.interruptDisable))
        transport.signalUsedBuffers(queue: 0)
        #expect(!intx.isAsserted)
        transport.writeConfiguration(PCIRegister.command, size: 2, UInt32(PCICommand.memorySpace))
        #expect(intx.isAsserted, "re-enabling INTx with the ISR set raises the line")
        _ = transport.read(0x1000, size: 1)
        #expect(!intx.isAsserted)
    }

    @Test("the PCI configuration access capability reads and writes BAR 0 through configuration space")
    func pciConfigurationAccess() throws {
        let capability = try #require(transport.capabilities(id: PCICapabilityID.vendorSpecific).last)
        transport.writeConfiguration(capability + 4, size: 1, 0)
        transport.writeConfiguration(capability + 8, size: 4, 0x12) // num_queues
        transport.writeConfiguration(capability + 12, size: 4, 2)
        #expect(transport.readConfiguration(capability + 16, size: 2) == 2)
        transport.writeConfiguration(capability + 8, size: 4, 0x16) // queue_select
        transport.writeConfiguration(capability + 16, size: 2, 1)
        #expect(read(Field.queueSelect) == 1)
        // A length other than 1, 2 or 4, or past the BAR, does nothing.
        transport.writeConfiguration(capability + 12, size: 4, 3)
        transport.writeConfiguration(capability + 16, size: 2, 0)
        #expect(read(Field.queueSelect) == 1)
        transport.writeConfiguration(capability + 8, size: 4, 0xFFFF_FFFE)
        transport.writeConfiguration(capability + 12, size: 4, 4)
        _ = transport.readConfiguration(capability + 16, size: 4)
    }

    @Test("random accesses to configuration space and BAR 0 leave a device that still resets and runs")
    func randomAccesses() throws {
        var generator = SplitMix64(state: 7)
        for _ in 0..<20_000 {
            let value = generator.next()
            let size = [1, 2, 4, 8, 3][Int(generator.next() % 5)]
            if generator.next() % 2 == 0 {
                let offset = Int(generator.next() % 4096)
                if generator.next() % 2 == 0 {
                    transport.writeConfiguration(offset, size: min(size, 4), UInt32(truncatingIfNeeded: value))
                } else {
                    _ = transport.readConfiguration(offset, size: min(size, 4))
                }
            } else {
                let offset = generator.next() % 0x9000
                if generator.next() % 2 == 0 { transport.write(offset, size: size, value) } else { _ = transport.read(offset, size: size) }
            }
        }
        transport.writeConfiguration(PCIRegister.command, size: 2, UInt32(PCICommand.memorySpace))
        transport.writeConfiguration(PCIRegister.bar0, size: 4, UInt32(Self.bar))
        write(Field.status, 0)
        let queue = DriverQueue(memory: memory, size: 16, base: GuestAddress(0x10000))
        negotiate(VirtioFeature.version1)
        setUpQueue(0, queue)
        driverOK()
        #expect(transport.isActive && status & VirtioStatus.driverOK != 0)
    }
}

final class PlainFunctionBusDevice: BusDevice {
    func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {}
    func write(offset: UInt64, from data: UnsafeRawBufferPointer) {}
}
