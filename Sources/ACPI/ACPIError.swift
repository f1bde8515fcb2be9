/// Why a table set could not be built. Every case carries the values at
/// fault so the VMM can report them as they are.
public enum ACPIError: Error, Equatable, Sendable, CustomStringConvertible {
    /// More vCPUs than xAPIC MADT entries can describe (x2APIC entries are
    /// not generated).
    case tooManyCPUs(Int, max: Int)
    /// Zero or negative vCPU count.
    case invalidCPUCount(Int)
    /// The IO-APIC ID equals the APIC ID of one of the vCPUs (0..<cpuCount).
    case ioAPICIDClashesWithCPU(ioAPICID: UInt8, cpuCount: Int)
    /// SLP_TYP is a 3-bit field of the sleep control register.
    case invalidSleepType(UInt8)
    /// An interrupt source override names a source that is not an ISA IRQ (0-15).
    case invalidInterruptOverrideSource(UInt8)
    /// Two interrupt source overrides for the same ISA IRQ.
    case duplicateInterruptOverride(source: UInt8)
    /// More legacy serial ports than the DSDT names COM1...COM9 for.
    case tooManySerialPorts(Int, max: Int)
    /// PCI bus range with start after end.
    case invalidPCIBusRange(start: UInt8, end: UInt8)
    /// ECAM base not aligned to 1 MiB (each bus owns 1 MiB of configuration space).
    case misalignedPCIECAMBase(UInt64)
    /// A PCI window whose end does not fit its address width (`name` is
    /// "ECAM", "mmio32" or "mmio64").
    case pciWindowOutOfRange(name: String, base: UInt64, size: UInt64)
    /// The table blob does not fit the space the VMM reserved for it.
    case tablesTooLarge(size: Int, limit: Int)
    /// The RSDP would overlap the table blob.
    case rsdpOverlapsTables(rsdpAddress: UInt64, tablesAddress: UInt64, tablesSize: Int)
    /// The RSDP or the table blob would run past the end of the 64-bit address space.
    case addressOverflow(address: UInt64, size: Int)
    /// An AML name that is not 1-4 characters of A-Z, 0-9 and '_' per
    /// segment (with an optional leading '\' or '^' prefixes).
    case invalidAMLName(String)
    /// An EISA ID that is not three capital letters and four hex digits.
    case invalidEISAID(String)
    /// An AML string with a NUL or a non-ASCII character.
    case invalidAMLString(String)
    /// An AML package (or PkgLength) beyond what the encoding can express.
    case amlObjectTooLarge(Int, max: Int)

    public var description: String {
        switch self {
        case let .tooManyCPUs(count, max):
            "\(count) vCPUs requested but the MADT describes at most \(max) (xAPIC IDs only)"
        case let .invalidCPUCount(count):
            "vCPU count must be at least 1, got \(count)"
        case let .ioAPICIDClashesWithCPU(id, count):
            "IO-APIC ID \(id) is also the APIC ID of a vCPU (vCPU APIC IDs are 0...\(count - 1))"
        case let .invalidSleepType(type):
            "S5 sleep type \(type) does not fit the 3-bit SLP_TYP field (0...7)"
        case let .invalidInterruptOverrideSource(source):
            "interrupt source override for IRQ \(source): only ISA IRQs 0...15 can be overridden"
        case let .duplicateInterruptOverride(source):
            "more than one interrupt source override for ISA IRQ \(source)"
        case let .tooManySerialPorts(count, max):
            "\(count) serial ports requested but the DSDT describes at most \(max)"
        case let .invalidPCIBusRange(start, end):
            "PCI bus range \(start)...\(end) is empty (start after end)"
        case let .misalignedPCIECAMBase(base):
            "PCI ECAM base 0x\(String(base, radix: 16)) is not aligned to 1 MiB"
        case let .pciWindowOutOfRange(name, base, size):
            "PCI \(name) window at 0x\(String(base, radix: 16)) of 0x\(String(size, radix: 16)) bytes does not fit its address width"
        case let .tablesTooLarge(size, limit):
            "ACPI tables take \(size) bytes but only \(limit) are reserved for them"
        case let .rsdpOverlapsTables(rsdp, tables, size):
            "RSDP at 0x\(String(rsdp, radix: 16)) overlaps the ACPI tables at 0x\(String(tables, radix: 16)) (\(size) bytes)"
        case let .addressOverflow(address, size):
            "\(size) bytes of ACPI data at 0x\(String(address, radix: 16)) run past the end of the address space"
        case let .invalidAMLName(name):
            "\"\(name)\" is not a valid AML name (segments of 1-4 characters A-Z, 0-9, '_', not starting with a digit)"
        case let .invalidEISAID(id):
            "\"\(id)\" is not a valid EISA ID (three letters A-Z then four hex digits)"
        case let .invalidAMLString(string):
            "\"\(string)\" cannot be an AML string (ASCII without NUL only)"
        case let .amlObjectTooLarge(size, max):
            "AML object of \(size) exceeds the encodable maximum of \(max)"
        }
    }
}
