/// The RSDP and the blob of tables it leads to, ready to copy into guest
/// memory: `rsdp` at the RSDP address, `tables` at the tables address.
public struct ACPITableSet: Sendable, Equatable {
    public let rsdp: [UInt8]
    /// XSDT, FADT, MADT, MCFG (with PCI) and DSDT, each 8-byte aligned, at
    /// the addresses the RSDP, XSDT and FADT were built with.
    public let tables: [UInt8]
}

public enum ACPITables {
    /// Tables start on 8-byte boundaries (64-bit fields stay naturally aligned).
    static let tableAlignment = 8

    /// Builds the RSDP (ACPI 2.0+, revision 2, checksum and extended checksum)
    /// pointing at the XSDT inside `tables`, and the tables themselves as
    /// they will sit at `tablesAddress`, at most `tablesLimit` bytes.
    public static func build(
        _ configuration: ACPIConfiguration, rsdpAddress: UInt64, tablesAddress: UInt64, tablesLimit: Int
    ) throws(ACPIError) -> ACPITableSet {
        let overrides = try validate(configuration)

        // Tables that do not depend on where others are.
        let dsdt = try DSDT.make(configuration)
        let madt = MADT.make(configuration, overrides: overrides)
        let mcfg = configuration.pciECAM.map(MCFG.make)

        // Layout: XSDT first (it holds the others' addresses), then the
        // tables it lists, then the DSDT.
        let xsdtEntryCount = mcfg == nil ? 2 : 3
        var sizes = [XSDT.length(entryCount: xsdtEntryCount), FADT.length, madt.count]
        if let mcfg { sizes.append(mcfg.count) }
        sizes.append(dsdt.count)
        var offsets: [Int] = []
        var end = 0
        for size in sizes {
            let offset = (end + tableAlignment - 1) / tableAlignment * tableAlignment
            offsets.append(offset)
            end = offset + size
        }
        guard end <= tablesLimit else { throw .tablesTooLarge(size: end, limit: tablesLimit) }
        guard tablesAddress <= UInt64.max - UInt64(end) else {
            throw .addressOverflow(address: tablesAddress, size: end)
        }
        let rsdpEnd = rsdpAddress.addingReportingOverflow(UInt64(RSDP.length))
        guard !rsdpEnd.overflow else { throw .addressOverflow(address: rsdpAddress, size: RSDP.length) }
        if rsdpAddress < tablesAddress + UInt64(end), tablesAddress < rsdpEnd.partialValue {
            throw .rsdpOverlapsTables(rsdpAddress: rsdpAddress, tablesAddress: tablesAddress, tablesSize: end)
        }
        let addresses = offsets.map { tablesAddress + UInt64($0) }

        let fadt = FADT.make(configuration, dsdtAddress: addresses[addresses.count - 1])
        let xsdt = XSDT.make(entries: Array(addresses[1..<(1 + xsdtEntryCount)]))

        var pieces = [xsdt, fadt, madt]
        if let mcfg { pieces.append(mcfg) }
        pieces.append(dsdt)
        var blob = [UInt8](repeating: 0, count: end)
        for (offset, piece) in zip(offsets, pieces) {
            blob.replaceSubrange(offset..<offset + piece.count, with: piece)
        }
        return ACPITableSet(rsdp: RSDP.make(xsdtAddress: addresses[0]), tables: blob)
    }

    /// Checks what the tables cannot express and returns the MADT's
    /// interrupt source overrides (the configured ones plus the SCI's).
    static func validate(_ configuration: ACPIConfiguration) throws(ACPIError) -> [InterruptSourceOverride] {
        let cpuCount = configuration.cpuCount
        guard cpuCount >= 1 else { throw .invalidCPUCount(cpuCount) }
        guard cpuCount <= ACPIConfiguration.maxCPUCount else {
            throw .tooManyCPUs(cpuCount, max: ACPIConfiguration.maxCPUCount)
        }
        guard Int(configuration.ioAPICID) >= cpuCount else {
            throw .ioAPICIDClashesWithCPU(ioAPICID: configuration.ioAPICID, cpuCount: cpuCount)
        }
        guard configuration.s5SleepType <= 7 else { throw .invalidSleepType(configuration.s5SleepType) }

        var overrides = configuration.interruptSourceOverrides
        var seen = Set<UInt8>()
        for override in overrides {
            guard override.source < 16 else { throw .invalidInterruptOverrideSource(override.source) }
            guard seen.insert(override.source).inserted else {
                throw .duplicateInterruptOverride(source: override.source)
            }
        }
        // The SCI is level-triggered, active-high (shareable, like PCI INTx),
        // unlike the ISA default of edge/active-high: say so unless the VMM
        // overrides that IRQ itself.
        if configuration.sciInterrupt < 16, !seen.contains(UInt8(configuration.sciInterrupt)) {
            let sci = UInt8(configuration.sciInterrupt)
            overrides.append(InterruptSourceOverride(
                source: sci, gsi: UInt32(sci), polarity: .activeHigh, triggerMode: .level))
        }

        guard configuration.serialPorts.count <= DSDT.maxSerialPorts else {
            throw .tooManySerialPorts(configuration.serialPorts.count, max: DSDT.maxSerialPorts)
        }

        if let pci = configuration.pciECAM {
            guard pci.startBus <= pci.endBus else {
                throw .invalidPCIBusRange(start: pci.startBus, end: pci.endBus)
            }
            guard pci.base & 0xF_FFFF == 0 else { throw .misalignedPCIECAMBase(pci.base) }
            // The ECAM space of every bus up to endBus must be addressable.
            let ecamSpan = UInt64(Int(pci.endBus) + 1) << 20
            guard pci.base <= UInt64.max - ecamSpan + 1 else {
                throw .pciWindowOutOfRange(name: "ECAM", base: pci.base, size: ecamSpan)
            }
            guard UInt64(pci.mmio32Base) + UInt64(pci.mmio32Size) <= 1 << 32 else {
                throw .pciWindowOutOfRange(name: "mmio32", base: UInt64(pci.mmio32Base), size: UInt64(pci.mmio32Size))
            }
            guard pci.mmio64Size == 0 || pci.mmio64Base <= UInt64.max - pci.mmio64Size + 1 else {
                throw .pciWindowOutOfRange(name: "mmio64", base: pci.mmio64Base, size: pci.mmio64Size)
            }
        }
        return overrides
    }
}
