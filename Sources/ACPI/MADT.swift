/// Multiple APIC Description Table: the local APIC of every vCPU, the
/// IO-APIC, how ISA IRQs reach it, and where NMIs come in.
enum MADT {
    /// ACPI 6.3+ layout (same entries as earlier revisions for what is used here).
    static let revision: UInt8 = 5

    /// PCAT_COMPAT is left clear. A hardware-reduced Linux guest replaces the
    /// 8259 PIC with its null PIC whatever this flag says, so claiming a
    /// PC-AT dual-8259 setup would only invite other guests to program a
    /// PIC that the platform does not present in its ACPI model (Firecracker
    /// and Cloud Hypervisor leave it clear too).
    static let flags: UInt32 = 0

    static let localAPICType: UInt8 = 0
    static let ioAPICType: UInt8 = 1
    static let interruptSourceOverrideType: UInt8 = 2
    static let localAPICNMIType: UInt8 = 4

    static func make(_ configuration: ACPIConfiguration, overrides: [InterruptSourceOverride]) -> [UInt8] {
        var body: [UInt8] = []
        body.appendLittleEndian(configuration.localAPICAddress)
        body.appendLittleEndian(flags)

        // Processor Local APIC: ACPI processor UID = APIC ID = vCPU index;
        // flags bit 0 = enabled (bit 1, online-capable, must be 0 then).
        for index in 0..<configuration.cpuCount {
            body += [localAPICType, 8, UInt8(index), UInt8(index)]
            body.appendLittleEndian(UInt32(1))
        }

        // The IO-APIC, inputs starting at GSI 0.
        body += [ioAPICType, 12, configuration.ioAPICID, 0]
        body.appendLittleEndian(configuration.ioAPICAddress)
        body.appendLittleEndian(UInt32(0))

        // Interrupt Source Overrides, bus 0 = ISA.
        for override in overrides {
            body += [interruptSourceOverrideType, 10, 0, override.source]
            body.appendLittleEndian(override.gsi)
            body.appendLittleEndian(override.flags)
        }

        // Local APIC NMI: all processors (UID 0xFF), LINT1, flags conform to bus.
        body += [localAPICNMIType, 6, 0xFF]
        body.appendLittleEndian(UInt16(0))
        body.append(1)

        return SystemDescriptionTable.make(signature: "APIC", revision: revision, body: body)
    }
}
