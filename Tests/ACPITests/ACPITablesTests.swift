import Testing
import ACPI

/// Configurations every structural test runs against.
private let configurations: [ACPIConfiguration] = [
    ACPIConfiguration(cpuCount: 1),
    ACPIConfiguration(cpuCount: 2),
    ACPIConfiguration(cpuCount: 8, pciECAM: .swiftletPCI),
    ACPIConfiguration(cpuCount: 254, serialPorts: [], cmosRTC: true),
]

@Suite("ACPI table set")
struct ACPITablesTests {
    // MARK: Structure

    @Test("every table, and the RSDP, sums to zero modulo 256", arguments: configurations)
    func checksums(configuration: ACPIConfiguration) throws {
        let view = try GuestView(configuration)
        #expect(Bytes(view.set.rsdp.prefix(20)).checksum == 0)
        #expect(view.rsdp.checksum == 0)
        let tables = view.allTables
        #expect(tables.count == (configuration.pciECAM == nil ? 4 : 5))
        for table in tables {
            #expect(table.checksum == 0, "\(table.ascii(0, 4))")
        }
    }

    @Test("each header's length covers exactly its table, and tables do not overlap", arguments: configurations)
    func lengths(configuration: ACPIConfiguration) throws {
        let view = try GuestView(configuration)
        let addresses = [view.rsdp.u64(24)] + view.xsdtEntries + [try #require(view.fadt).u64(140)]
        var ranges: [Range<UInt64>] = []
        for address in addresses {
            let table = try #require(view.table(at: address))
            #expect(Int(table.u32(4)) == table.count)
            #expect(address % 8 == 0)
            ranges.append(address..<address + UInt64(table.count))
        }
        ranges.sort { $0.lowerBound < $1.lowerBound }
        for (first, second) in zip(ranges, ranges.dropFirst()) {
            #expect(!first.overlaps(second))
        }
        // Nothing but tables and alignment padding in the blob.
        #expect(try #require(ranges.last).upperBound == view.tablesAddress + UInt64(view.set.tables.count))
    }

    @Test("every table carries Swiftlet's OEM and creator IDs", arguments: configurations)
    func identity(configuration: ACPIConfiguration) throws {
        let view = try GuestView(configuration)
        #expect(view.rsdp.ascii(9, 6) == "SWIFTL")
        for table in view.allTables {
            #expect(table.ascii(10, 6) == "SWIFTL")
            #expect(table.ascii(16, 8) == "SWIFTLET")
            #expect(table.ascii(28, 4) == "SWFT")
        }
    }

    // MARK: RSDP and XSDT

    @Test("the RSDP is an ACPI 2.0 pointer with both checksums, leading to the XSDT")
    func rsdp() throws {
        let view = try GuestView(ACPIConfiguration(cpuCount: 1))
        let rsdp = view.rsdp
        #expect(rsdp.count == 36)
        #expect(rsdp.ascii(0, 8) == "RSD PTR ")
        #expect(Bytes(rsdp.raw[0..<20]).checksum == 0)
        #expect(rsdp.checksum == 0)
        #expect(rsdp.u8(15) == 2)
        #expect(rsdp.u32(16) == 0)  // no RSDT
        #expect(rsdp.u32(20) == 36)
        #expect(rsdp.u64(24) == GuestView.tablesAddress)  // the XSDT comes first
        #expect(try #require(view.xsdt).ascii(0, 4) == "XSDT")
    }

    @Test("the XSDT lists FADT and MADT, and MCFG only with PCI",
          arguments: [(nil, ["FACP", "APIC"]), (PCIECAMConfiguration?.some(.swiftletPCI), ["FACP", "APIC", "MCFG"])]
              as [(PCIECAMConfiguration?, [String])])
    func xsdt(pci: PCIECAMConfiguration?, expected: [String]) throws {
        let view = try GuestView(ACPIConfiguration(cpuCount: 2, pciECAM: pci))
        let signatures = try view.xsdtEntries.map { try #require(view.table(at: $0)).ascii(0, 4) }
        #expect(signatures == expected)
        for address in view.xsdtEntries {
            #expect(address >= view.tablesAddress)
            #expect(address < view.tablesAddress + UInt64(view.set.tables.count))
        }
        #expect((view.table("MCFG") != nil) == (pci != nil))
    }

    @Test("addresses follow tablesAddress wherever the tables are placed")
    func relocation() throws {
        let low = try GuestView(ACPIConfiguration(cpuCount: 2), tablesAddress: 0xE0100)
        let high = try GuestView(ACPIConfiguration(cpuCount: 2), tablesAddress: 0x8000_0000)
        #expect(high.rsdp.u64(24) == 0x8000_0000)
        #expect(zip(low.xsdtEntries, high.xsdtEntries).allSatisfy { $0 - 0xE0100 == $1 - 0x8000_0000 })
        #expect(try #require(high.dsdt).ascii(0, 4) == "DSDT")
    }

    // MARK: FADT

    @Test("the FADT is the 276-byte ACPI 6.5 layout of a hardware-reduced platform")
    func fadtLayout() throws {
        let fadt = try #require(try GuestView(ACPIConfiguration(cpuCount: 1)).fadt)
        #expect(fadt.count == 276)
        #expect(fadt.u8(8) == 6)  // revision
        #expect(fadt.u8(131) == 5)  // minor revision
        let flags = fadt.u32(112)
        #expect(flags & (1 << 20) != 0, "HW_REDUCED_ACPI")
        #expect(flags & (1 << 10) != 0, "RESET_REG_SUP")
        #expect(flags & (1 << 4) != 0, "no fixed power button")
        #expect(flags & (1 << 5) != 0, "no fixed sleep button")
        #expect(fadt.u32(36) == 0 && fadt.u64(132) == 0, "no FACS")
        #expect(fadt.u16(46) == 9, "SCI_INT")
        // No fixed-hardware register blocks.
        #expect(fadt.raw[56..<88].allSatisfy { $0 == 0 })
        #expect(fadt.raw[148..<244].allSatisfy { $0 == 0 })
    }

    @Test("the sleep control, sleep status and reset registers are byte-wide I/O ports")
    func fadtRegisters() throws {
        let fadt = try #require(try GuestView(ACPIConfiguration(cpuCount: 1)).fadt)
        func gas(_ offset: Int) -> (space: UInt8, width: UInt8, offset: UInt8, access: UInt8, address: UInt64) {
            (fadt.u8(offset), fadt.u8(offset + 1), fadt.u8(offset + 2), fadt.u8(offset + 3), fadt.u64(offset + 4))
        }
        let control = gas(244)
        #expect(control.space == 1 && control.width == 8 && control.offset == 0 && control.access == 1)
        #expect(control.address == 0x600)
        let status = gas(256)
        #expect(status.space == 1 && status.width == 8 && status.access == 1)
        #expect(status.address == 0x601)
        let reset = gas(116)
        #expect(reset.space == 1 && reset.width == 8 && reset.access == 1)
        #expect(reset.address == 0x602)
        #expect(fadt.u8(128) == 0x01)
    }

    @Test("configured ports and values reach the FADT")
    func fadtConfigured() throws {
        let configuration = ACPIConfiguration(
            cpuCount: 1, sleepControlPort: 0x3C0, sleepStatusPort: 0x3C1, resetPort: 0xCF9, resetValue: 0x06,
            sciInterrupt: 11)
        let fadt = try #require(try GuestView(configuration).fadt)
        #expect(fadt.u64(248) == 0x3C0)
        #expect(fadt.u64(260) == 0x3C1)
        #expect(fadt.u64(120) == 0xCF9)
        #expect(fadt.u8(128) == 0x06)
        #expect(fadt.u16(46) == 11)
    }

    @Test("the FADT points at the DSDT through both DSDT and X_DSDT below 4 GiB, X_DSDT only above")
    func fadtDSDTPointers() throws {
        let low = try GuestView(ACPIConfiguration(cpuCount: 1))
        let lowFADT = try #require(low.fadt)
        #expect(UInt64(lowFADT.u32(40)) == lowFADT.u64(140))
        #expect(try #require(low.table(at: lowFADT.u64(140))).ascii(0, 4) == "DSDT")

        let high = try GuestView(ACPIConfiguration(cpuCount: 1), rsdpAddress: 0xE0000, tablesAddress: 0x1_0000_0000)
        let highFADT = try #require(high.fadt)
        #expect(highFADT.u32(40) == 0)
        #expect(highFADT.u64(140) > 0xFFFF_FFFF)
        #expect(try #require(high.dsdt).ascii(0, 4) == "DSDT")
    }

    @Test("IA-PC boot flags: no VGA, no ASPM, no CMOS RTC unless configured, and no i8042, legacy or no-MSI claims")
    func fadtBootFlags() throws {
        let plain = try #require(try GuestView(ACPIConfiguration(cpuCount: 1)).fadt).u16(109)
        #expect(plain == (1 << 2) | (1 << 4) | (1 << 5))
        let withRTC = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, cmosRTC: true)).fadt).u16(109)
        #expect(withRTC == (1 << 2) | (1 << 4))
    }

    // MARK: MADT

    @Test("the MADT has exactly one enabled local APIC per vCPU, IDs 0..n-1", arguments: [1, 2, 8, 254])
    func madtLocalAPICs(cpuCount: Int) throws {
        let view = try GuestView(ACPIConfiguration(cpuCount: cpuCount))
        let madt = try #require(view.madt)
        #expect(madt.u32(36) == 0xFEE0_0000)
        let lapics = view.madtEntries.filter { $0.type == 0 }
        #expect(lapics.count == cpuCount)
        for (index, entry) in lapics.enumerated() {
            #expect(entry.bytes.count == 8)
            #expect(entry.bytes.u8(2) == UInt8(index), "processor UID")
            #expect(entry.bytes.u8(3) == UInt8(index), "APIC ID")
            #expect(entry.bytes.u32(4) == 1, "enabled")
        }
        // The entries fill the table exactly.
        #expect(44 + view.madtEntries.reduce(0) { $0 + $1.bytes.count } == madt.count)
    }

    @Test("the MADT describes the IO-APIC, the PIT and SCI overrides, and LINT1 as NMI")
    func madtInterruptController() throws {
        let view = try GuestView(ACPIConfiguration(cpuCount: 4))
        #expect(try #require(view.madt).u32(40) == 0, "PCAT_COMPAT clear")

        let ioapics = view.madtEntries.filter { $0.type == 1 }
        #expect(ioapics.count == 1)
        let ioapic = try #require(ioapics.first).bytes
        #expect(ioapic.count == 12)
        #expect(ioapic.u8(2) == 4, "IO-APIC ID after the vCPUs' APIC IDs")
        #expect(ioapic.u32(4) == 0xFEC0_0000)
        #expect(ioapic.u32(8) == 0, "GSI base")

        let overrides = view.madtEntries.filter { $0.type == 2 }.map(\.bytes)
        #expect(overrides.count == 2)
        #expect(overrides.allSatisfy { $0.count == 10 && $0.u8(2) == 0 })
        let timer = try #require(overrides.first { $0.u8(3) == 0 })
        #expect(timer.u32(4) == 2)
        #expect(timer.u16(8) == 0)
        let sci = try #require(overrides.first { $0.u8(3) == 9 })
        #expect(sci.u32(4) == 9)
        #expect(sci.u16(8) == 0x000D, "level-triggered, active-high")

        let nmis = view.madtEntries.filter { $0.type == 4 }.map(\.bytes)
        #expect(nmis.count == 1)
        let nmi = try #require(nmis.first)
        #expect(nmi.count == 6)
        #expect(nmi.u8(2) == 0xFF, "all processors")
        #expect(nmi.u16(3) == 0)
        #expect(nmi.u8(5) == 1, "LINT1")
    }

    @Test("configured overrides replace the defaults, and an explicit SCI override is not duplicated")
    func madtConfiguredOverrides() throws {
        let configuration = ACPIConfiguration(
            cpuCount: 1,
            interruptSourceOverrides: [InterruptSourceOverride(source: 9, gsi: 20, polarity: .activeLow, triggerMode: .level)])
        let view = try GuestView(configuration)
        let overrides = view.madtEntries.filter { $0.type == 2 }.map(\.bytes)
        #expect(overrides.count == 1)
        #expect(overrides.first?.u8(3) == 9)
        #expect(overrides.first?.u32(4) == 20)
        #expect(overrides.first?.u16(8) == 0x000F)
    }

    // MARK: DSDT

    @Test("the DSDT declares \\_S5 as Package(){5, 0, 0, 0} at the root")
    func dsdtS5() throws {
        let dsdt = try #require(try GuestView(ACPIConfiguration(cpuCount: 1)).dsdt)
        #expect(dsdt.u8(8) == 2, "revision 2: 64-bit integers")
        let s5: [UInt8] = [0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x07, 0x04, 0x0A, 0x05, 0x00, 0x00, 0x00]
        // At the start of the definition block, so in the root scope.
        #expect(Array(dsdt.raw[36..<36 + s5.count]) == s5)
        #expect(dsdt.occurrences(of: s5).count == 1)
    }

    @Test("the \\_S5 package carries the configured sleep type")
    func dsdtS5SleepType() throws {
        let dsdt = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, s5SleepType: 0)).dsdt)
        #expect(Array(dsdt.raw[36..<48]) == [0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00])
    }

    @Test("the DSDT describes COM1 as a PNP0501 UART with its ports and GSI 4")
    func dsdtSerial() throws {
        let dsdt = try #require(try GuestView(ACPIConfiguration(cpuCount: 1)).dsdt)
        let device = dsdt.occurrences(of: [0x5B, 0x82])
        #expect(device.count == 1)
        #expect(dsdt.occurrences(of: Array("COM1".utf8)).count == 1)
        #expect(dsdt.occurrences(of: [0x0C, 0x41, 0xD0, 0x05, 0x01]).count == 1)
        #expect(dsdt.occurrences(of: [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08]).count == 1)
        #expect(dsdt.occurrences(of: [0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00]).count == 1)

        let none = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, serialPorts: [])).dsdt)
        #expect(none.occurrences(of: [0x5B, 0x82]).isEmpty)
        #expect(none.count == 36 + 13, "only \\_S5 left")
    }

    @Test("the DSDT describes a CMOS RTC only when configured")
    func dsdtRTC() throws {
        let pnp0b00: [UInt8] = [0x0C, 0x41, 0xD0, 0x0B, 0x00]
        let without = try #require(try GuestView(ACPIConfiguration(cpuCount: 1)).dsdt)
        #expect(without.occurrences(of: pnp0b00).isEmpty)
        let with = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, cmosRTC: true)).dsdt)
        #expect(with.occurrences(of: pnp0b00).count == 1)
        #expect(with.occurrences(of: [0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02]).count == 1)
    }

    @Test("PCI adds the PCI0 root bridge and the ECAM reservation to the DSDT")
    func dsdtPCI() throws {
        let without = try #require(try GuestView(ACPIConfiguration(cpuCount: 1)).dsdt)
        #expect(without.occurrences(of: Array("PCI0".utf8)).isEmpty)

        let dsdt = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, pciECAM: .swiftletPCI)).dsdt)
        #expect(dsdt.occurrences(of: Array("PCI0".utf8)).count == 1)
        #expect(dsdt.occurrences(of: Array("MBRD".utf8)).count == 1)
        for id in [[0x0A, 0x08], [0x0A, 0x03], [0x0C, 0x02]] as [[UInt8]] {
            #expect(dsdt.occurrences(of: [0x0C, 0x41, 0xD0] + id).count == 1, "EISA ID \(id)")
        }
        #expect(dsdt.occurrences(of: Array("_SEG".utf8) + [0x00]).count == 1)
        #expect(dsdt.occurrences(of: Array("_BBN".utf8) + [0x00]).count == 1)
        #expect(dsdt.occurrences(of: AML.Resource.wordBusNumber(0...255)).count == 1)
        #expect(dsdt.occurrences(of: [0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08]).count == 1)
        #expect(dsdt.occurrences(of: AML.Resource.dwordMemory(0xC000_0000...0xDFFF_FFFF)).count == 1)
        #expect(dsdt.occurrences(of: AML.Resource.qwordMemory(0x100_0000_0000...0x10F_FFFF_FFFF)).count == 1)
        #expect(dsdt.occurrences(of: AML.Resource.memory32Fixed(base: 0xE000_0000, length: 0x1000_0000)).count == 1)
    }

    @Test("the ECAM reservation covers only the decoded buses, and an empty 64-bit window is left out")
    func dsdtPCIPartial() throws {
        let pci = PCIECAMConfiguration(base: 0xB000_0000, startBus: 0, endBus: 15,
                                       mmio32Base: 0x8000_0000, mmio32Size: 0x1000_0000)
        let dsdt = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, pciECAM: pci)).dsdt)
        #expect(dsdt.occurrences(of: AML.Resource.memory32Fixed(base: 0xB000_0000, length: 0x100_0000)).count == 1)
        #expect(dsdt.occurrences(of: AML.Resource.wordBusNumber(0...15)).count == 1)
        #expect(dsdt.occurrences(of: [0x8A, 0x2B, 0x00]).isEmpty)
    }

    @Test("INTx routes become PCI0._PRT: one package per device and pin naming its GSI; none without routes")
    func dsdtPRT() throws {
        let without = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, pciECAM: .swiftletPCI)).dsdt)
        #expect(without.occurrences(of: Array("_PRT".utf8)).isEmpty)
        var pci = PCIECAMConfiguration.swiftletPCI
        pci.interruptRoutes = [PCIInterruptRoute(device: 1, pin: 0, gsi: 17), PCIInterruptRoute(device: 2, pin: 3, gsi: 21)]
        let dsdt = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, pciECAM: pci)).dsdt)
        #expect(dsdt.occurrences(of: Array("_PRT".utf8)).count == 1)
        // Package(4){0x1FFFF, Zero, Zero, 17} and Package(4){0x2FFFF, 3, Zero, 21}.
        #expect(dsdt.occurrences(of: try AML.package([AML.integer(0x1_FFFF), AML.integer(0), AML.integer(0), AML.integer(17)])).count == 1)
        #expect(dsdt.occurrences(of: try AML.package([AML.integer(0x2_FFFF), AML.integer(3), AML.integer(0), AML.integer(21)])).count == 1)
        #expect(dsdt.checksum == 0)
    }

    @Test("additional AML is appended to the DSDT")
    func dsdtAdditional() throws {
        let extra = try AML.scope("\\_SB", [AML.device("VIO0", [AML.name("_HID", AML.string("LNRO0005"))])])
        let dsdt = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, serialPorts: [],
                                                                 additionalDSDTContent: extra)).dsdt)
        #expect(Array(dsdt.raw.suffix(extra.count)) == extra)
        #expect(dsdt.checksum == 0)
    }

    // MARK: MCFG

    @Test("the MCFG has one allocation: base, segment 0, bus range")
    func mcfg() throws {
        let pci = PCIECAMConfiguration(base: 0xE000_0000, startBus: 0, endBus: 63,
                                       mmio32Base: 0xC000_0000, mmio32Size: 0x2000_0000)
        let mcfg = try #require(try GuestView(ACPIConfiguration(cpuCount: 1, pciECAM: pci)).table("MCFG"))
        #expect(mcfg.count == 60)
        #expect(mcfg.u8(8) == 1)
        #expect(mcfg.u64(36) == 0)
        #expect(mcfg.u64(44) == 0xE000_0000)
        #expect(mcfg.u16(52) == 0)
        #expect(mcfg.u8(54) == 0)
        #expect(mcfg.u8(55) == 63)
        #expect(mcfg.u32(56) == 0)
    }

    // MARK: Errors

    @Test("more vCPUs than xAPIC entries allow is refused", arguments: [255, 300])
    func tooManyCPUs(cpuCount: Int) {
        #expect(throws: ACPIError.tooManyCPUs(cpuCount, max: 254)) {
            try GuestView(ACPIConfiguration(cpuCount: cpuCount))
        }
    }

    @Test("no vCPUs is refused")
    func noCPUs() {
        #expect(throws: ACPIError.invalidCPUCount(0)) { try GuestView(ACPIConfiguration(cpuCount: 0)) }
    }

    @Test("a too small tablesLimit is refused with the size needed")
    func tooSmall() throws {
        let configuration = ACPIConfiguration(cpuCount: 8)
        let size = try GuestView(configuration).set.tables.count
        #expect(throws: ACPIError.tablesTooLarge(size: size, limit: size - 1)) {
            try ACPITables.build(configuration, rsdpAddress: 0xE0000, tablesAddress: 0xE0100, tablesLimit: size - 1)
        }
        let exact = try ACPITables.build(configuration, rsdpAddress: 0xE0000, tablesAddress: 0xE0100, tablesLimit: size)
        #expect(exact.tables.count == size)
    }

    @Test("an IO-APIC ID equal to a vCPU's APIC ID is refused")
    func ioAPICClash() {
        #expect(throws: ACPIError.ioAPICIDClashesWithCPU(ioAPICID: 1, cpuCount: 2)) {
            try GuestView(ACPIConfiguration(cpuCount: 2, ioAPICID: 1))
        }
    }

    @Test("an S5 sleep type wider than SLP_TYP's 3 bits is refused")
    func badSleepType() {
        #expect(throws: ACPIError.invalidSleepType(8)) { try GuestView(ACPIConfiguration(cpuCount: 1, s5SleepType: 8)) }
    }

    @Test("overrides of non-ISA or repeated IRQs are refused")
    func badOverrides() {
        #expect(throws: ACPIError.invalidInterruptOverrideSource(16)) {
            try GuestView(ACPIConfiguration(cpuCount: 1, interruptSourceOverrides: [.init(source: 16, gsi: 16)]))
        }
        #expect(throws: ACPIError.duplicateInterruptOverride(source: 0)) {
            try GuestView(ACPIConfiguration(cpuCount: 1, interruptSourceOverrides: [.isaTimerToGSI2, .init(source: 0, gsi: 0)]))
        }
    }

    @Test("inconsistent PCI configurations are refused")
    func badPCI() {
        func build(_ pci: PCIECAMConfiguration) throws {
            _ = try GuestView(ACPIConfiguration(cpuCount: 1, pciECAM: pci))
        }
        #expect(throws: ACPIError.invalidPCIBusRange(start: 5, end: 4)) {
            try build(PCIECAMConfiguration(base: 0xE000_0000, startBus: 5, endBus: 4, mmio32Base: 0, mmio32Size: 0))
        }
        #expect(throws: ACPIError.misalignedPCIECAMBase(0xE000_1000)) {
            try build(PCIECAMConfiguration(base: 0xE000_1000, mmio32Base: 0, mmio32Size: 0))
        }
        #expect(throws: ACPIError.pciWindowOutOfRange(name: "mmio32", base: 0xF000_0000, size: 0x2000_0000)) {
            try build(PCIECAMConfiguration(base: 0xE000_0000, mmio32Base: 0xF000_0000, mmio32Size: 0x2000_0000))
        }
        #expect(throws: ACPIError.pciWindowOutOfRange(name: "mmio64", base: UInt64.max - 0xFFF, size: 0x2000)) {
            try build(PCIECAMConfiguration(base: 0xE000_0000, mmio32Base: 0, mmio32Size: 0,
                                           mmio64Base: UInt64.max - 0xFFF, mmio64Size: 0x2000))
        }
        #expect(throws: ACPIError.self) {
            try build(PCIECAMConfiguration(base: UInt64.max & ~0xF_FFFF, mmio32Base: 0, mmio32Size: 0))
        }
    }

    @Test("an RSDP overlapping the tables, tables past the address space, or more than nine serial ports are refused")
    func badLayout() throws {
        let size = try GuestView(ACPIConfiguration(cpuCount: 1)).set.tables.count
        #expect(throws: ACPIError.rsdpOverlapsTables(rsdpAddress: 0xE0108, tablesAddress: 0xE0100, tablesSize: size)) {
            try ACPITables.build(ACPIConfiguration(cpuCount: 1), rsdpAddress: 0xE0108, tablesAddress: 0xE0100,
                                 tablesLimit: 0x1FF00)
        }
        #expect(throws: ACPIError.rsdpOverlapsTables(rsdpAddress: 0xE00F0, tablesAddress: 0xE0100, tablesSize: size)) {
            try ACPITables.build(ACPIConfiguration(cpuCount: 1), rsdpAddress: 0xE00F0, tablesAddress: 0xE0100,
                                 tablesLimit: 0x1FF00)
        }
        #expect(throws: ACPIError.addressOverflow(address: UInt64.max - 0xFF, size: size)) {
            try ACPITables.build(ACPIConfiguration(cpuCount: 1), rsdpAddress: 0xE0000, tablesAddress: UInt64.max - 0xFF,
                                 tablesLimit: 0x1FF00)
        }
        // Adjacent is fine.
        _ = try ACPITables.build(ACPIConfiguration(cpuCount: 1), rsdpAddress: 0xE0100 + UInt64(size),
                                 tablesAddress: 0xE0100, tablesLimit: 0x1FF00)
        _ = try ACPITables.build(ACPIConfiguration(cpuCount: 1), rsdpAddress: 0xE0100 - 36,
                                 tablesAddress: 0xE0100, tablesLimit: 0x1FF00)
        #expect(throws: ACPIError.tooManySerialPorts(10, max: 9)) {
            try GuestView(ACPIConfiguration(cpuCount: 1, serialPorts: Array(repeating: .com1, count: 10)))
        }
    }

    @Test("error descriptions name the values at fault")
    func errorDescriptions() {
        #expect(ACPIError.tooManyCPUs(300, max: 254).description.contains("300"))
        #expect(ACPIError.tablesTooLarge(size: 5000, limit: 4096).description.contains("5000"))
        #expect(ACPIError.tablesTooLarge(size: 5000, limit: 4096).description.contains("4096"))
        #expect(ACPIError.misalignedPCIECAMBase(0xE000_1000).description.contains("0xe0001000"))
    }

    // MARK: Power-off protocol

    @Test("S5 is entered by writing (SLP_TYP << 2) | SLP_EN, 0x34 for sleep type 5")
    func sleepControlValue() {
        #expect(ACPISleepControl.value(sleepType: 5) == 0x34)
        #expect(ACPISleepControl.requestedSleepType(written: 0x34) == 5)
        #expect(ACPISleepControl.requestedSleepType(written: 0x14) == nil, "SLP_EN clear")
        #expect(ACPISleepControl.requestedSleepType(written: 0x80) == nil, "WAK_STS clear written to the status port")
        for type in UInt8(0)...7 {
            #expect(ACPISleepControl.requestedSleepType(written: ACPISleepControl.value(sleepType: type)) == type)
        }
    }
}
