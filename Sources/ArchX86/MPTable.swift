/// The Intel MultiProcessor Specification 1.4 tables: a floating pointer in
/// the EBDA and the configuration table it points at (processors, the ISA
/// bus, the IO-APIC, ISA IRQ n on IO-APIC pin n, ExtINT and NMI on each
/// local APIC's LINT0/LINT1), as Firecracker and QEMU's firmware write them.
///
/// Linux takes its SMP configuration from the ACPI MADT; the MP table
/// matters before that: without one, `find_smp_config` scans the first KiB,
/// the EBDA and the whole BIOS area at 0xF0000 for "_MP_". On hosts that
/// emulate guest kernel code (kvm_pvm) that scan took 2.0 s of a 17 s boot
/// (docs/performance.md); found at the EBDA, it ends at once. A complete
/// table (not just a pointer) keeps `acpi=off` guests working: a floating
/// pointer with neither a table nor a default configuration is a BUG() in
/// Linux's MP parser.
public enum MPTable {
    public static let floatingPointerSize = 16
    static let headerSize = 44
    static let processorEntrySize = 20
    static let otherEntrySize = 8
    /// ISA IRQs 0-15, each on the IO-APIC pin of the same number (KVM's default routing).
    static let isaInterrupts = 16
    static let isaBusID: UInt8 = 0

    /// The floating pointer (to write at `floatingPointerAddress`) and the
    /// configuration table (to write at `tableAddress`).
    public static func build(cpuCount: Int, ioAPICID: UInt8, ioAPICAddress: UInt32, localAPICAddress: UInt32,
                             tableAddress: UInt32) -> (floatingPointer: [UInt8], table: [UInt8]) {
        var entries: [UInt8] = []
        var entryCount = 0
        for cpu in 0..<max(cpuCount, 1) {
            var entry = [UInt8](repeating: 0, count: processorEntrySize)
            entry[0] = 0                                    // processor
            entry[1] = UInt8(truncatingIfNeeded: cpu)       // local APIC ID (as in the MADT)
            entry[2] = 0x14                                 // local APIC version
            entry[3] = cpu == 0 ? 0b11 : 0b01               // enabled; bootstrap processor
            store(UInt32(0x600), into: &entry, at: 4)       // CPU signature: family 6
            store(UInt32(0x201), into: &entry, at: 8)       // feature flags: FPU, APIC
            entries += entry
            entryCount += 1
        }
        // The ISA bus.
        entries += [1, isaBusID] + Array("ISA   ".utf8)
        entryCount += 1
        // The IO-APIC, enabled.
        var ioAPIC: [UInt8] = [2, ioAPICID, 0x11, 1, 0, 0, 0, 0]
        store(ioAPICAddress, into: &ioAPIC, at: 4)
        entries += ioAPIC
        entryCount += 1
        // ISA IRQ n -> IO-APIC pin n, polarity and trigger as the bus defines.
        for irq in 0..<isaInterrupts {
            entries += [3, 0, 0, 0, isaBusID, UInt8(irq), ioAPICID, UInt8(irq)]
            entryCount += 1
        }
        // Local interrupts on every local APIC (0xFF): ExtINT on LINT0, NMI on LINT1.
        entries += [4, 3, 0, 0, isaBusID, 0, 0xFF, 0]
        entries += [4, 1, 0, 0, isaBusID, 0, 0xFF, 1]
        entryCount += 2

        var table = [UInt8](repeating: 0, count: headerSize)
        table.replaceSubrange(0..<4, with: Array("PCMP".utf8))
        store(UInt16(truncatingIfNeeded: headerSize + entries.count), into: &table, at: 4)
        table[6] = 4                                        // specification revision 1.4
        table.replaceSubrange(8..<16, with: Array("SWIFTLET".utf8))
        table.replaceSubrange(16..<28, with: Array("SWIFTLET-VM ".utf8))
        store(UInt16(truncatingIfNeeded: entryCount), into: &table, at: 34)
        store(localAPICAddress, into: &table, at: 36)
        table += entries
        table[7] = checksum(table)

        var pointer = [UInt8](repeating: 0, count: floatingPointerSize)
        pointer.replaceSubrange(0..<4, with: Array("_MP_".utf8))
        store(tableAddress, into: &pointer, at: 4)
        pointer[8] = 1                                      // length in 16-byte units
        pointer[9] = 4                                      // specification revision 1.4
        // Feature byte 1 = 0: the configuration table is present (no default configuration).
        pointer[10] = checksum(pointer)
        return (pointer, table)
    }

    /// The byte that makes all bytes sum to zero (with the checksum byte still 0).
    static func checksum(_ bytes: [UInt8]) -> UInt8 {
        0 &- bytes.reduce(UInt8(0)) { $0 &+ $1 }
    }

    static func store<T: FixedWidthInteger>(_ value: T, into bytes: inout [UInt8], at offset: Int) {
        for index in 0..<(T.bitWidth / 8) { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (index * 8)) }
    }
}
