import Devices
import PCI
import Testing

@Suite("PCI configuration space")
struct ConfigurationSpaceTests {
    static func makeSpace() throws -> PCIConfigurationSpace {
        var space = PCIConfigurationSpace(vendorID: 0x1234, deviceID: 0x5678, classCode: 0x02_00_00, revisionID: 3,
                                          subsystemVendorID: 0xAAAA, subsystemID: 0xBBBB, interruptPin: 1)
        try space.addBAR(0, PCIBARDefinition(size: 0x8000), address: 0xC000_0000)
        try space.addBAR(2, PCIBARDefinition(size: 1 << 32, is64Bit: true, prefetchable: true), address: 0x10_0000_0000)
        return space
    }

    @Test("the header holds the IDs, class, revision and interrupt pin, and the guest cannot change them")
    func readOnlyHeader() throws {
        let function = PlainFunction(try Self.makeSpace())
        #expect(function.readConfiguration(0, size: 4) == 0x5678_1234)
        #expect(function.readConfiguration(8, size: 4) == 0x0200_0003)
        #expect(function.readConfiguration(0x2C, size: 4) == 0xBBBB_AAAA)
        #expect(function.readConfiguration(PCIRegister.interruptPin, size: 1) == 1)
        for offset in [0, 2, 8, 0x2C, 0x3D, 0x30] { function.writeConfiguration(offset, size: 4, 0xFFFF_FFFF) }
        #expect(function.readConfiguration(0, size: 4) == 0x5678_1234)
        #expect(function.readConfiguration(8, size: 4) == 0x0200_0003)
        #expect(function.readConfiguration(PCIRegister.interruptPin, size: 1) == 1)
        // No expansion ROM: its BAR reads back zero after all-ones.
        #expect(function.readConfiguration(PCIRegister.expansionROM, size: 4) == 0)
    }

    @Test("only the memory, bus-master and INTx-disable command bits are writable; interrupt line is")
    func commandRegister() throws {
        let function = PlainFunction(try Self.makeSpace())
        function.writeConfiguration(PCIRegister.command, size: 2, 0xFFFF)
        #expect(function.readConfiguration(PCIRegister.command, size: 2) == 0x0406)
        function.writeConfiguration(PCIRegister.interruptLine, size: 1, 11)
        #expect(function.readConfiguration(PCIRegister.interruptLine, size: 1) == 11)
        let space = function.space.withLock { $0 }
        #expect(space.memoryDecodingEnabled && space.busMasterEnabled && space.interruptDisabled)
    }

    @Test("writing all-ones to a 32-bit BAR reads back its size; the address is restored by writing it")
    func bar32Sizing() throws {
        let function = PlainFunction(try Self.makeSpace())
        #expect(function.readConfiguration(0x10, size: 4) == 0xC000_0000)
        function.writeConfiguration(0x10, size: 4, 0xFFFF_FFFF)
        let sized = function.readConfiguration(0x10, size: 4)
        #expect(sized == 0xFFFF_8000)
        #expect(~(sized & 0xFFFF_FFF0) &+ 1 == 0x8000)
        function.writeConfiguration(0x10, size: 4, 0xD000_0000)
        #expect(function.space.withLock { $0.barAddress(0) } == 0xD000_0000)
        // Unaligned addresses lose their low bits, as on hardware.
        function.writeConfiguration(0x10, size: 4, 0xD000_1234)
        #expect(function.space.withLock { $0.barAddress(0) } == 0xD000_0000)
    }

    @Test("a 64-bit BAR sizes over both registers and keeps its type and prefetchable bits")
    func bar64Sizing() throws {
        let function = PlainFunction(try Self.makeSpace())
        #expect(function.readConfiguration(0x18, size: 4) == 0x0000_000C)
        #expect(function.readConfiguration(0x1C, size: 4) == 0x10)
        function.writeConfiguration(0x18, size: 4, 0xFFFF_FFFF)
        function.writeConfiguration(0x1C, size: 4, 0xFFFF_FFFF)
        #expect(function.readConfiguration(0x18, size: 4) == 0x0000_000C)
        #expect(function.readConfiguration(0x1C, size: 4) == 0xFFFF_FFFF)
        let size = ~(UInt64(function.readConfiguration(0x1C, size: 4)) << 32 | UInt64(function.readConfiguration(0x18, size: 4) & ~0xF)) &+ 1
        #expect(size == 1 << 32)
        // Unused BARs read zero whatever is written.
        function.writeConfiguration(0x14, size: 4, 0xFFFF_FFFF)
        #expect(function.readConfiguration(0x14, size: 4) == 0)
    }

    @Test("a BAR decodes only with memory decoding on, at a non-zero address that does not wrap")
    func decodedBAR() throws {
        var space = try Self.makeSpace()
        #expect(space.decodedBAR(0) == nil)
        space.setValue(UInt32(PCICommand.memorySpace), offset: PCIRegister.command, size: 2)
        #expect(space.decodedBAR(0)?.base == 0xC000_0000)
        #expect(space.decodedBAR(2)?.base == 0x10_0000_0000)
        [UInt8](repeating: 0xFF, count: 8).withUnsafeBytes { space.write(offset: 0x18, from: $0) }
        #expect(space.decodedBAR(2) == nil, "a 64-bit BAR at the top of the address space wraps")
        #expect(space.decodedBAR(1) == nil && space.decodedBAR(3) == nil)
    }

    @Test("invalid BAR declarations are refused")
    func invalidBARs() throws {
        var space = try Self.makeSpace()
        #expect(throws: PCIConfigurationError.self) { try space.addBAR(0, PCIBARDefinition(size: 0x1000)) }
        #expect(throws: PCIConfigurationError.self) { try space.addBAR(3, PCIBARDefinition(size: 0x1000)) }
        #expect(throws: PCIConfigurationError.self) { try space.addBAR(4, PCIBARDefinition(size: 0x1800)) }
        #expect(throws: PCIConfigurationError.self) { try space.addBAR(4, PCIBARDefinition(size: 0x1000), address: 0x800) }
        #expect(throws: PCIConfigurationError.self) { try space.addBAR(5, PCIBARDefinition(size: 0x1000, is64Bit: true)) }
        #expect(throws: PCIConfigurationError.self) { try space.addBAR(6, PCIBARDefinition(size: 0x1000)) }
        try space.addBAR(5, PCIBARDefinition(size: 16))
    }

    @Test("capabilities form a list from 0x34 with the status bit set; their masks apply")
    func capabilityList() throws {
        var space = try Self.makeSpace()
        let first = try space.addCapability(id: 0x09, body: [16, 1, 0, 0])
        let second = try space.addCapability(id: 0x11, body: [0x01, 0x00], writableMask: [0x00, 0xC0])
        let function = PlainFunction(space)
        #expect(function.readConfiguration(PCIRegister.status, size: 2) & 0x10 != 0)
        #expect(function.capabilities(id: 0x09) == [first])
        #expect(function.capabilities(id: 0x11) == [second])
        #expect(first == 0x40 && second > first && second % 4 == 0)
        function.writeConfiguration(second + 2, size: 2, 0xFFFF)
        #expect(function.readConfiguration(second + 2, size: 2) == 0xC001)
        // The ID and next pointer are read-only.
        function.writeConfiguration(first, size: 2, 0)
        #expect(function.readConfiguration(first, size: 1) == 0x09)
        #expect(function.readConfiguration(first + 1, size: 1) == UInt32(second))
    }

    @Test("the capability space runs out with an error, not a crash")
    func capabilitySpaceFull() throws {
        var space = try Self.makeSpace()
        #expect(throws: PCIConfigurationError.self) {
            for _ in 0..<64 { try space.addCapability(id: 0x09, body: Array(repeating: 0, count: 14)) }
        }
    }

    @Test("accesses of any size at any offset, past 256 or past the 4 KiB end, read zero or are ignored")
    func oddAccesses() throws {
        var space = try Self.makeSpace()
        let before = space
        var data = [UInt8](repeating: 0xAA, count: 8)
        data.withUnsafeMutableBytes { space.read(offset: 0xFE, into: $0) }
        #expect(data[2...] == [0, 0, 0, 0, 0, 0])
        data.withUnsafeMutableBytes { space.read(offset: 4090, into: $0) }
        #expect(data == Array(repeating: 0, count: 8))
        data.withUnsafeMutableBytes { space.read(offset: -3, into: $0) }
        [UInt8](repeating: 0xFF, count: 8).withUnsafeBytes { space.write(offset: 300, from: $0) }
        [UInt8](repeating: 0xFF, count: 3).withUnsafeBytes { space.write(offset: -1, from: $0) }
        #expect(space.value(offset: 0, size: 4) == before.value(offset: 0, size: 4))
    }

    @Test("random writes anywhere leave the read-only fields intact")
    func randomWrites() throws {
        var generator = SplitMix64(state: 42)
        let function = PlainFunction(try Self.makeSpace())
        for _ in 0..<20_000 {
            let offset = Int(generator.next() % 4200) - 50
            let size = [1, 2, 3, 4, 8, 0][Int(generator.next() % 6)]
            let value = generator.next()
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
            bytes.withUnsafeBytes { function.writeConfiguration(offset: offset, from: $0) }
            var sink = [UInt8](repeating: 0, count: size)
            sink.withUnsafeMutableBytes { function.readConfiguration(offset: offset, into: $0) }
        }
        #expect(function.readConfiguration(0, size: 4) == 0x5678_1234)
        #expect(function.readConfiguration(PCIRegister.interruptPin, size: 1) == 1)
    }
}

@Suite("PCI configuration access")
struct ConfigurationAccessTests {
    static func makeBus() throws -> PCIRootBus {
        let bus = PCIRootBus()
        try bus.attach(PCIHostBridge(), at: PCIAddress(device: 0)!)
        try bus.attach(PlainFunction(try ConfigurationSpaceTests.makeSpace()), at: PCIAddress(device: 3)!)
        return bus
    }

    static func configAddress(device: UInt32, register: UInt32, bus: UInt32 = 0, function: UInt32 = 0) -> UInt64 {
        UInt64(1 << 31 | bus << 16 | device << 11 | function << 8 | register)
    }

    @Test("0xCF8 selects a function and register; 0xCFC-0xCFF read and write it at any width")
    func portMechanism() throws {
        let ports = PCIConfigurationPorts(bus: try Self.makeBus())
        ports.write(0, size: 4, Self.configAddress(device: 0, register: 0))
        #expect(ports.read(4, size: 4) == 0x0008_1B36)
        #expect(ports.read(0, size: 4) == Self.configAddress(device: 0, register: 0))
        ports.write(0, size: 4, Self.configAddress(device: 3, register: 0))
        #expect(ports.read(4, size: 4) == 0x5678_1234)
        #expect(ports.read(6, size: 2) == 0x5678)
        #expect(ports.read(7, size: 1) == 0x56)
        // A 4-byte read at 0xCFE covers only the window's last two bytes.
        #expect(ports.read(6, size: 4) == 0xFFFF_5678)
        // The register's low two bits are ignored: 0x0A selects dword 0x08.
        ports.write(0, size: 4, Self.configAddress(device: 3, register: 0x0A))
        #expect(ports.read(0, size: 4) & 0xFF == 0x08)
        #expect(ports.read(4, size: 4) == 0x0200_0003)
        // Writes go through to the function.
        ports.write(0, size: 4, Self.configAddress(device: 3, register: UInt32(PCIRegister.interruptLine)))
        ports.write(4, size: 1, 9)
        #expect(ports.read(4, size: 1) == 9)
    }

    @Test("an empty slot, another bus, a disabled address or a byte access to 0xCF8 read all-ones")
    func portMisses() throws {
        let ports = PCIConfigurationPorts(bus: try Self.makeBus())
        ports.write(0, size: 4, Self.configAddress(device: 4, register: 0))
        #expect(ports.read(4, size: 4) == 0xFFFF_FFFF)
        ports.write(0, size: 4, Self.configAddress(device: 3, register: 0, bus: 1))
        #expect(ports.read(4, size: 4) == 0xFFFF_FFFF)
        ports.write(0, size: 4, Self.configAddress(device: 3, register: 0, function: 1))
        #expect(ports.read(4, size: 4) == 0xFFFF_FFFF)
        ports.write(0, size: 4, Self.configAddress(device: 3, register: 0) & 0x7FFF_FFFF)
        #expect(ports.read(4, size: 4) == 0xFFFF_FFFF)
        ports.write(0, size: 4, Self.configAddress(device: 3, register: 0))
        ports.write(3, size: 1, 0x01) // Linux's type-1 probe pokes 0xCFB
        #expect(ports.read(0, size: 4) == Self.configAddress(device: 3, register: 0))
        #expect(ports.read(1, size: 1) == 0xFF)
        // Reserved bits of the address register read as zero.
        ports.write(0, size: 4, 0xFFFF_FFFF)
        #expect(ports.read(0, size: 4) == 0x80FF_FFFC)
    }

    @Test("ECAM decodes bus, device, function and register from the offset, extended space included")
    func ecam() throws {
        let ecam = PCIECAM(bus: try Self.makeBus())
        #expect(ecam.read(0, size: 4) == 0x0008_1B36)
        #expect(ecam.read(3 << 15, size: 4) == 0x5678_1234)
        #expect(ecam.read(3 << 15 | 0x0A, size: 2) == 0x0200)
        #expect(ecam.read(3 << 15 | 0x100, size: 4) == 0, "no extended capabilities")
        #expect(ecam.read(3 << 15 | 1 << 12, size: 4) == 0xFFFF_FFFF, "function 1 is absent")
        #expect(ecam.read(1 << 20 | 3 << 15, size: 4) == 0xFFFF_FFFF, "bus 1 is empty")
        #expect(ecam.read(1 << 28, size: 4) == 0xFFFF_FFFF, "beyond 256 buses")
        // An 8-byte access at the last bytes of a function's space is clipped.
        #expect(ecam.read(3 << 15 | 0xFFC, size: 8) == 0xFFFF_FFFF_0000_0000)
        ecam.write(3 << 15 | 0x3C, size: 1, 7)
        #expect(ecam.read(3 << 15 | 0x3C, size: 1) == 7)
    }

    @Test("slots: 00:00.0 is the host bridge, devices take the next free slot, a slot holds one function")
    func slots() throws {
        let bus = try Self.makeBus()
        #expect(try bus.freeSlot() == PCIAddress(device: 1))
        #expect(throws: PCIError.slotInUse(PCIAddress(device: 3)!)) { try bus.attach(PCIHostBridge(), at: PCIAddress(device: 3)!) }
        #expect(PCIAddress(device: 32) == nil && PCIAddress(device: 1, function: 8) == nil)
        #expect(PCIAddress(bus: 0, device: 0x1F, function: 7)!.description == "00:1f.7")
        let bridge = PCIHostBridge()
        #expect(bridge.readConfiguration(PCIRegister.classCode, size: 3) == 0x06_00_00)
    }

    @Test("the BAR allocator aligns each BAR to its size and reports exhaustion")
    func barAllocator() throws {
        let allocator = PCIBARAllocator(name: "test", start: 0xC000_0000, size: 0x10_0000)
        #expect(try allocator.allocate(size: 0x1000) == 0xC000_0000)
        #expect(try allocator.allocate(size: 0x8000) == 0xC000_8000)
        #expect(try allocator.allocate(size: 0x1000) == 0xC001_0000)
        #expect(throws: PCIError.self) { try allocator.allocate(size: 0x10_0000) }
        #expect(throws: PCIError.self) { try allocator.allocate(size: 0x3000) }
        #expect(try allocator.allocate(size: 0x8_0000) == 0xC008_0000)
        #expect(throws: PCIError.self) { try allocator.allocate(size: 0x1000) }
        let top = PCIBARAllocator(name: "top", start: UInt64.max - 0xFFF, size: 0x1000)
        #expect(throws: PCIError.self) { try top.allocate(size: 0x2000) }
    }

    @Test("INTx pins of each device are spread over IO-APIC inputs 16-23")
    func intxRouting() {
        #expect(PCIInterruptRouting.gsi(device: 1, pin: 0) == 17)
        #expect(PCIInterruptRouting.gsi(device: 7, pin: 1) == 16)
        #expect((0..<32).allSatisfy { (16...23).contains(PCIInterruptRouting.gsi(device: UInt8($0), pin: 3)) })
    }
}
