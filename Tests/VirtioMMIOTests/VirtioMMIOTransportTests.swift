import Devices
import GuestMemory
import HostSystem
import KVM
import Synchronization
import Testing
import Virtio
import VirtioMMIO
import VirtioTestSupport

final class CountingLine: InterruptLine {
    let count = Atomic<Int>(0)
    func trigger() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

/// Records the ioeventfds KVM would get, keyed by (address, queue index).
final class FakeMMIOPlatform: VirtioMMIOPlatform {
    struct Key: Hashable { let address: UInt64; let queue: UInt32 }
    let notifiers = Mutex<[Key: EventFD]>([:])
    let refuse: Bool

    init(refuse: Bool = false) {
        self.refuse = refuse
    }

    func registerNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32) throws(VirtioMMIOError) {
        if refuse { throw .notifier(address: address, queue: queue, cause: .missingCapability(name: "KVM_CAP_IOEVENTFD (test)")) }
        notifiers.withLock { $0[Key(address: address, queue: queue)] = eventFD }
    }

    func unregisterNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32) {
        notifiers.withLock { _ = $0.removeValue(forKey: Key(address: address, queue: queue)) }
    }

    var registered: [Key] { notifiers.withLock { $0.keys.sorted { ($0.address, $0.queue) < ($1.address, $1.queue) } } }

    /// What a guest's 32-bit write of `queue` to QueueNotify does under KVM:
    /// the matching ioeventfd, else a VM exit to the transport.
    func guestNotify(_ transport: VirtioMMIOTransport, queue: UInt32) {
        let address = transport.base + VirtioMMIOLayout.Register.queueNotify
        if let eventFD = notifiers.withLock({ $0[Key(address: address, queue: queue)] }) {
            try? eventFD.signal()
        } else {
            transport.write(VirtioMMIOLayout.Register.queueNotify, size: 4, UInt64(queue))
        }
    }
}

extension BusDevice {
    func read(_ offset: UInt64, size: Int) -> UInt64 {
        var bytes = [UInt8](repeating: 0xEE, count: size)
        bytes.withUnsafeMutableBytes { read(offset: offset, into: $0) }
        return bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    func write(_ offset: UInt64, size: Int, _ value: UInt64) {
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
        bytes.withUnsafeBytes { write(offset: offset, from: $0) }
    }
}

typealias R = VirtioMMIOLayout.Register

@Suite("virtio-mmio transport")
struct VirtioMMIOTransportTests {
    static let base: UInt64 = 0xD000_1000
    let memory: GuestMemory
    let device: FakeDevice
    let platform: FakeMMIOPlatform
    let line = CountingLine()
    let log = LogCollector()
    let clock = ManualClock()
    let transport: VirtioMMIOTransport

    init() throws {
        try self.init(device: FakeDevice())
    }

    init(device: FakeDevice, platform: FakeMMIOPlatform = FakeMMIOPlatform()) throws {
        self.device = device
        self.platform = platform
        memory = try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)])
        transport = VirtioMMIOTransport(device: device, base: Self.base, memory: memory, platform: platform,
                                        interrupt: line, log: log.sink, clock: clock.now)
    }

    // MARK: Driver actions (32-bit accesses, as the spec requires)

    func read(_ register: UInt64) -> UInt32 { UInt32(transport.read(register, size: 4)) }
    func write(_ register: UInt64, _ value: UInt32) { transport.write(register, size: 4, UInt64(value)) }
    var status: UInt8 { UInt8(read(R.status)) }

    @discardableResult
    func negotiate(_ features: UInt64) -> UInt8 {
        write(R.status, UInt32(VirtioStatus.acknowledge))
        write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver))
        write(R.driverFeaturesSelect, 0)
        write(R.driverFeatures, UInt32(truncatingIfNeeded: features))
        write(R.driverFeaturesSelect, 1)
        write(R.driverFeatures, UInt32(truncatingIfNeeded: features >> 32))
        write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK))
        return status
    }

    func setUpQueue(_ index: UInt32, _ queue: DriverQueue) {
        write(R.queueSelect, index)
        write(R.queueSize, UInt32(queue.size))
        for (low, address) in [(R.queueDescriptorLow, queue.configuration.descriptorTable), (R.queueDriverLow, queue.configuration.availableRing),
                               (R.queueDeviceLow, queue.configuration.usedRing)] {
            write(low, UInt32(truncatingIfNeeded: address.rawValue))
            write(low + 4, UInt32(truncatingIfNeeded: address.rawValue >> 32))
        }
        write(R.queueReady, 1)
    }

    func driverOK() {
        write(R.status, UInt32(status | VirtioStatus.driverOK))
    }

    // MARK: Tests

    @Test("identity: magic 'virt', version 2, the device type, the vendor; no shared memory regions")
    func identity() {
        #expect(read(R.magicValue) == 0x7472_6976)
        #expect(read(R.version) == 2)
        #expect(read(R.deviceID) == 4)
        #expect(read(R.vendorID) == VirtioMMIOLayout.vendorID)
        write(R.sharedMemorySelect, 0)
        #expect(read(R.sharedMemoryLengthLow) == 0xFFFF_FFFF && read(R.sharedMemoryLengthHigh) == 0xFFFF_FFFF, "length -1: no such region")
        #expect(read(R.configurationGeneration) == 0 && read(R.interruptStatus) == 0 && read(R.status) == 0)
    }

    @Test("device features are offered in two words with VERSION_1; RING_PACKED never; later words are 0")
    func deviceFeatures() {
        write(R.deviceFeaturesSelect, 0)
        #expect(read(R.deviceFeatures) == UInt32(1 << 29 | 1 << 5))
        write(R.deviceFeaturesSelect, 1)
        #expect(read(R.deviceFeatures) == 1)
        write(R.deviceFeaturesSelect, 2)
        #expect(read(R.deviceFeatures) == 0)
        #expect(transport.offeredFeatures == VirtioFeature.version1 | VirtioFeature.eventIndex | 1 << 5)
    }

    @Test("FEATURES_OK sticks for offered features with VERSION_1; the driver's features then freeze")
    func acceptedFeatures() throws {
        #expect(negotiate(VirtioFeature.version1 | VirtioFeature.eventIndex) & VirtioStatus.featuresOK != 0)
        write(R.driverFeaturesSelect, 0)
        write(R.driverFeatures, 0)
        setUpQueue(0, DriverQueue(memory: memory, size: 16))
        driverOK()
        let activation = try #require(device.activations.first)
        #expect(activation.features == VirtioFeature.version1 | VirtioFeature.eventIndex, "features are fixed after FEATURES_OK")
        #expect(log.recorded.isEmpty)
    }

    @Test("a legacy-only driver (no VERSION_1) is refused: FEATURES_OK stays clear, one log line says why")
    func legacyDriverRefused() {
        #expect(negotiate(VirtioFeature.eventIndex) & VirtioStatus.featuresOK == 0)
        #expect(log.recorded.count == 1)
        #expect(log.recorded.first?.contains("virtio-rng at MMIO 0xd0001000: refused a legacy-only driver") == true, "\(log.recorded)")
        driverOK()
        #expect(status & VirtioStatus.driverOK == 0)
        #expect(device.activations.isEmpty)
    }

    @Test("features the device did not offer are refused")
    func unofferedFeatures() {
        #expect(negotiate(VirtioFeature.version1 | 1 << 7) & VirtioStatus.featuresOK == 0)
        write(R.status, 0)
        #expect(negotiate(VirtioFeature.version1 | VirtioFeature.ringPacked) & VirtioStatus.featuresOK == 0)
    }

    @Test("status: DRIVER_OK needs FEATURES_OK; bits are never cleared but by a reset to 0; the driver cannot set NEEDS_RESET")
    func statusMachine() {
        write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver))
        write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.driverOK))
        #expect(status == VirtioStatus.acknowledge | VirtioStatus.driver)
        #expect(device.activations.isEmpty)
        write(R.status, UInt32(VirtioStatus.acknowledge))
        #expect(status == VirtioStatus.acknowledge | VirtioStatus.driver, "clearing DRIVER is ignored")
        write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.deviceNeedsReset))
        #expect(status & VirtioStatus.deviceNeedsReset == 0)
        write(R.status, 0)
        #expect(status == 0 && device.resets == 1)
    }

    @Test("queue registers: maximum sizes, absent queues read 0, sizes above the maximum ignored, QueueReady reads back")
    func queueRegisters() {
        write(R.queueSelect, 0)
        #expect(read(R.queueSizeMaximum) == 16)
        write(R.queueSelect, 1)
        #expect(read(R.queueSizeMaximum) == 8 && read(R.queueReady) == 0)
        write(R.queueSize, 16) // above the maximum
        write(R.queueReady, 1)
        #expect(read(R.queueReady) == 1)
        write(R.queueReady, 0)
        #expect(read(R.queueReady) == 0, "before DRIVER_OK a queue can be taken back (Linux does on a failed setup)")
        write(R.queueReady, 2)
        #expect(read(R.queueReady) == 0, "only 0 and 1 mean something")
        for absent in [2, 0xFFFF, 0xFFFF_FFFF] as [UInt32] {
            write(R.queueSelect, absent)
            write(R.queueSize, 4)
            write(R.queueReady, 1)
            #expect(read(R.queueSizeMaximum) == 0 && read(R.queueReady) == 0, "queue \(absent)")
        }
    }

    @Test("a ready queue's size and addresses are fixed; DRIVER_OK fixes readiness too")
    func readyQueueIsFixed() throws {
        negotiate(VirtioFeature.version1)
        let queue = DriverQueue(memory: memory, size: 8)
        setUpQueue(0, queue)
        write(R.queueSize, 2)
        write(R.queueDescriptorLow, 0x4000)
        write(R.queueSelect, 1)
        write(R.queueSize, 3) // not a power of two: stored, refused at DRIVER_OK if the queue were ready
        driverOK()
        let activation = try #require(device.activations.first)
        #expect(activation.queues.map(\.index) == [0])
        #expect(activation.queues.first?.queue.configuration == queue.configuration, "the writes after QueueReady changed nothing")
        write(R.queueSelect, 0)
        write(R.queueReady, 0)
        #expect(read(R.queueReady) == 1, "after DRIVER_OK only a reset stops a queue")
        write(R.queueSelect, 1)
        write(R.queueReady, 1)
        #expect(read(R.queueReady) == 0)
    }

    @Test("DRIVER_OK activates the device with its ready queues, from both address halves, and an ioeventfd per queue on QueueNotify")
    func activation() throws {
        let high = try GuestMemory(ranges: [(GuestAddress(0), 1 << 20), (GuestAddress(0x1_0000_0000), 1 << 20)])
        let fixture = try VirtioMMIOTransportTests(device: FakeDevice(), memoryOverride: high)
        let first = DriverQueue(memory: high, size: 16, base: GuestAddress(0x1_0001_0000))
        let second = DriverQueue(memory: high, size: 8, base: GuestAddress(0x20000))
        fixture.negotiate(VirtioFeature.version1 | VirtioFeature.eventIndex)
        fixture.setUpQueue(0, first)
        fixture.setUpQueue(1, second)
        fixture.driverOK()
        #expect(fixture.status & VirtioStatus.driverOK != 0 && fixture.transport.isActive)
        let activation = try #require(fixture.device.activations.first)
        #expect(activation.queues.map(\.index) == [0, 1])
        #expect(activation.queues[0].queue.configuration == first.configuration, "64-bit addresses from the low and high registers")
        #expect(activation.queues[1].queue.configuration == second.configuration)
        #expect(activation.queues[0].queue.eventIndex)
        let notify = Self.base + R.queueNotify
        #expect(fixture.platform.registered == [.init(address: notify, queue: 0), .init(address: notify, queue: 1)])
        fixture.platform.guestNotify(fixture.transport, queue: 1)
        #expect(try activation.queues[1].notification.consume() == 1)
        #expect(try activation.queues[0].notification.consume() == nil, "the value written selects the queue")
        // A notification that reaches user space is passed on the same way.
        fixture.write(R.queueNotify, 0)
        #expect(try activation.queues[0].notification.consume() == 1)
        fixture.write(R.queueNotify, 7) // no such queue: nothing
        #expect(try activation.queues[0].notification.consume() == nil && activation.queues[1].notification.consume() == nil)
    }

    @Test("when KVM refuses the ioeventfds, notifications still arrive through the exit path, and the log says so once")
    func notifierFallback() throws {
        let fixture = try VirtioMMIOTransportTests(device: FakeDevice(), platform: FakeMMIOPlatform(refuse: true))
        for _ in 0..<3 {
            fixture.write(R.status, 0)
            fixture.negotiate(VirtioFeature.version1)
            fixture.setUpQueue(0, DriverQueue(memory: fixture.memory, size: 16))
            fixture.setUpQueue(1, DriverQueue(memory: fixture.memory, size: 8, base: GuestAddress(0x40000)))
            fixture.driverOK()
        }
        let activation = try #require(fixture.device.activations.last)
        fixture.platform.guestNotify(fixture.transport, queue: 0)
        #expect(try activation.queues[0].notification.consume() == 1)
        #expect(fixture.log.recorded.count == 1 && fixture.log.recorded[0].contains("notifications go through user space"), "\(fixture.log.recorded)")
    }

    @Test("reset (status 0) stops the device, removes the ioeventfds and returns every register to its initial value")
    func reset() throws {
        negotiate(VirtioFeature.version1)
        setUpQueue(0, DriverQueue(memory: memory, size: 16))
        driverOK()
        transport.signalUsedBuffers(queue: 0)
        write(R.queueSelect, 1)
        write(R.deviceFeaturesSelect, 1)
        write(R.status, 0)
        #expect(status == 0 && device.resets == 1 && !transport.isActive)
        #expect(platform.registered.isEmpty)
        #expect(read(R.interruptStatus) == 0)
        #expect(read(R.queueSizeMaximum) == 16 && read(R.queueReady) == 0, "QueueSel is back to 0, queue 0 is not ready")
        #expect(read(R.deviceFeatures) == UInt32(1 << 29 | 1 << 5), "DeviceFeaturesSel is back to 0")
        // And the device comes up again.
        negotiate(VirtioFeature.version1)
        setUpQueue(0, DriverQueue(memory: memory, size: 16))
        driverOK()
        #expect(device.activations.count == 2 && transport.isActive)
    }

    @Test("a bad ring at DRIVER_OK sets DEVICE_NEEDS_RESET, logs one line and raises a configuration-change interrupt")
    func badRing() throws {
        negotiate(VirtioFeature.version1)
        write(R.queueSelect, 0)
        write(R.queueSize, 16)
        write(R.queueDescriptorLow, 0x7000_0000) // outside the 1 MiB of RAM
        write(R.queueDriverLow, 0x2000)
        write(R.queueDeviceLow, 0x3000)
        write(R.queueReady, 1)
        let generation = read(R.configurationGeneration)
        driverOK()
        #expect(device.activations.isEmpty)
        #expect(status & VirtioStatus.deviceNeedsReset != 0)
        #expect(log.recorded.count == 1 && log.recorded[0].contains("virtio-rng at MMIO 0xd0001000: device needs reset: queue 0"), "\(log.recorded)")
        #expect(read(R.configurationGeneration) != generation)
        #expect(read(R.interruptStatus) == VirtioMMIOLayout.interruptConfigurationChange && line.value == 1)
        transport.reportDeviceError("again")
        #expect(log.recorded.count == 1 && line.value == 1, "reported once until reset")
        write(R.status, 0)
        #expect(status == 0 && read(R.interruptStatus) == 0)
    }

    @Test("a driver that breaks its rings and resets in a loop is counted every time but logged once per kind per interval")
    func boundedLog() {
        func round() {
            negotiate(VirtioFeature.version1)
            write(R.queueSelect, 0)
            write(R.queueSize, 16)
            write(R.queueDescriptorLow, 0x7000_0000) // outside RAM
            write(R.queueReady, 1)
            driverOK()
            #expect(status & VirtioStatus.deviceNeedsReset != 0)
            write(R.status, 0)
            negotiate(VirtioFeature.eventIndex) // and a legacy driver
            write(R.status, 0)
        }
        for _ in 0..<100 { round() }
        #expect(log.recorded.count == 2, "\(log.recorded)")
        #expect(transport.events.count(.driverOKRefused) == 100 && transport.events.count(.legacyDriverRefused) == 100)
        let counters = Dictionary(uniqueKeysWithValues: transport.events.counters.map { ($0.name, $0.value) })
        #expect(counters["log_driver_ok_refused"] == 100 && counters["log_lines_suppressed"] == 198, "\(counters)")
        clock.advance(seconds: 10)
        round()
        #expect(log.recorded.count == 4, "\(log.recorded)")
        #expect(log.recorded.dropFirst(2).allSatisfy { $0.hasSuffix("(99 more like this were not logged)") }, "\(log.recorded)")
    }

    @Test("a device that fails to start is reported the same way")
    func activationFailure() throws {
        let fixture = try VirtioMMIOTransportTests(device: FakeDevice(failActivation: true))
        fixture.negotiate(VirtioFeature.version1)
        fixture.setUpQueue(0, DriverQueue(memory: fixture.memory, size: 16))
        fixture.driverOK()
        #expect(fixture.status & VirtioStatus.deviceNeedsReset != 0)
        #expect(fixture.log.recorded.count == 1 && fixture.log.recorded[0].contains("asked to fail"))
    }

    @Test("interrupts: used buffers set bit 0, configuration changes bit 1 and the generation; each pulses the line; ACK clears the bits written")
    func interrupts() {
        transport.signalUsedBuffers(queue: 1)
        #expect(read(R.interruptStatus) == 1 && line.value == 1)
        let generation = read(R.configurationGeneration)
        transport.signalConfigurationChange()
        #expect(read(R.interruptStatus) == 3 && line.value == 2)
        #expect(read(R.configurationGeneration) == generation &+ 1)
        write(R.interruptAcknowledge, 2)
        #expect(read(R.interruptStatus) == 1)
        transport.signalUsedBuffers(queue: 0)
        #expect(read(R.interruptStatus) == 1 && line.value == 3, "a pending cause still pulses again: the line is edge-triggered")
        write(R.interruptAcknowledge, 0xFFFF_FFFF)
        #expect(read(R.interruptStatus) == 0)
        #expect(device.counters.interrupts.load(ordering: .relaxed) == 3)
    }

    @Test("registers take only aligned 32-bit accesses; other widths read 0 and write nothing")
    func accessSizes() {
        #expect(transport.read(R.magicValue, size: 1) == 0 && transport.read(R.magicValue, size: 2) == 0)
        #expect(transport.read(R.magicValue, size: 8) == 0, "a 64-bit read of magic and version is not a register access")
        #expect(transport.read(R.magicValue + 1, size: 4) == 0, "unaligned")
        transport.write(R.status, size: 1, UInt64(VirtioStatus.acknowledge))
        transport.write(R.status, size: 2, UInt64(VirtioStatus.acknowledge))
        transport.write(R.status, size: 8, UInt64(VirtioStatus.acknowledge))
        transport.write(R.status + 2, size: 4, UInt64(VirtioStatus.acknowledge))
        #expect(status == 0)
        write(R.status, UInt32(VirtioStatus.acknowledge))
        #expect(status == VirtioStatus.acknowledge)
    }

    @Test("the device configuration at 0x100 takes any width and offset, and writes reach the device")
    func configurationSpace() {
        #expect(transport.read(0x100, size: 1) == 0x00)
        #expect(transport.read(0x105, size: 2) == 0x0605)
        #expect(transport.read(0x108, size: 4) == 0x0B0A_0908)
        #expect(transport.read(0x110, size: 8) == 0x1716_1514_1312_1110)
        #expect(transport.read(0xFFF, size: 1) == 0xFF, "the last byte of the page is offset 0xEFF of the configuration")
        transport.write(0x102, size: 2, 0xBEEF)
        #expect(device.configurationWrites.count == 1 && device.configurationWrites[0].offset == 2 && device.configurationWrites[0].bytes == [0xEF, 0xBE])
    }

    @Test("writes to read-only registers and to gaps change nothing")
    func readOnlyRegisters() {
        for register in [R.magicValue, R.version, R.deviceID, R.vendorID, R.deviceFeatures, R.queueSizeMaximum,
                         R.interruptStatus, R.configurationGeneration, R.sharedMemoryLengthLow, R.sharedMemoryBaseHigh,
                         R.queueReset, 0x018, 0x040, 0x0C4, 0x0F8] {
            write(register, 0x5A5A_5A5A)
        }
        #expect(read(R.magicValue) == 0x7472_6976 && read(R.version) == 2 && read(R.deviceID) == 4)
        #expect(read(R.queueSizeMaximum) == 16 && read(R.interruptStatus) == 0 && read(R.configurationGeneration) == 0)
        #expect(read(R.deviceFeatures) == UInt32(1 << 29 | 1 << 5))
        #expect(read(R.queueReset) == 0 && read(R.queueDescriptorLow) == 0, "write-only and unoffered registers read 0")
        #expect(status == 0 && device.activations.isEmpty && device.resets == 0)
    }

    @Test("shutdown stops the device; a driver cannot start it again")
    func shutdown() throws {
        negotiate(VirtioFeature.version1)
        setUpQueue(0, DriverQueue(memory: memory, size: 16))
        driverOK()
        transport.shutdown()
        #expect(device.resets == 1 && !transport.isActive && platform.registered.isEmpty)
        negotiate(VirtioFeature.version1)
        setUpQueue(0, DriverQueue(memory: memory, size: 16))
        driverOK()
        #expect(device.activations.count == 1 && !transport.isActive)
    }

    @Test("random accesses of any width anywhere in the page leave a device that still resets and runs")
    func randomAccesses() throws {
        var generator = SplitMix64(state: 11)
        for _ in 0..<20_000 {
            let value = generator.next()
            let size = [1, 2, 4, 8, 3][Int(generator.next() % 5)]
            // Mostly registers, where the state is.
            let offset = generator.next() % 4 == 0 ? generator.next() % 0x1000 : (generator.next() % 0x40) * 4
            switch generator.next() % 8 {
            case 0: transport.signalUsedBuffers(queue: Int(value % 3))
            case 1: transport.signalConfigurationChange()
            case 2, 3, 4: transport.write(offset, size: size, value)
            default: _ = transport.read(offset, size: size)
            }
        }
        write(R.status, 0)
        write(R.interruptAcknowledge, 3)
        negotiate(VirtioFeature.version1)
        setUpQueue(0, DriverQueue(memory: memory, size: 16))
        driverOK()
        #expect(transport.isActive && status & VirtioStatus.driverOK != 0 && status & VirtioStatus.deviceNeedsReset == 0)
    }
}

extension VirtioMMIOTransportTests {
    init(device: FakeDevice, memoryOverride: GuestMemory) throws {
        self.device = device
        platform = FakeMMIOPlatform()
        memory = memoryOverride
        transport = VirtioMMIOTransport(device: device, base: Self.base, memory: memory, platform: platform,
                                        interrupt: line, log: log.sink)
    }
}

/// A deterministic generator for the "any access" tests.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
