/// Fixed ACPI Description Table, ACPI 6.5 layout (revision 6, minor 5, 276
/// bytes), describing a hardware-reduced platform: no PM1/GPE register
/// blocks, no PM timer, no SCI, no FACS. What remains is the DSDT pointer
/// and three registers: sleep control/status (how the guest powers off) and
/// reset (how it reboots).
enum FADT {
    static let length = 276
    static let revision: UInt8 = 6
    static let minorRevision: UInt8 = 5

    // MARK: Field offsets

    static let dsdtOffset = 40
    static let sciInterruptOffset = 46
    static let c2LatencyOffset = 96
    static let c3LatencyOffset = 98
    static let bootArchitectureFlagsOffset = 109
    static let flagsOffset = 112
    static let resetRegisterOffset = 116
    static let resetValueOffset = 128
    static let minorRevisionOffset = 131
    static let xDSDTOffset = 140
    static let sleepControlOffset = 244
    static let sleepStatusOffset = 256
    static let hypervisorVendorOffset = 268

    // MARK: Fixed feature flags

    /// Bit 4: the power button, if any, is a control-method device, so Linux
    /// registers no fixed-feature power button.
    static let powerButtonIsControlMethod: UInt32 = 1 << 4
    /// Bit 5: likewise for the sleep button.
    static let sleepButtonIsControlMethod: UInt32 = 1 << 5
    /// Bit 10: RESET_REG is valid. Linux's reboot tries the ACPI reset first.
    static let resetRegisterSupported: UInt32 = 1 << 10
    /// Bit 20: hardware-reduced ACPI. Linux then ignores the fixed hardware
    /// blocks, installs no SCI handler, uses the null legacy PIC and skips
    /// the PIT/HPET timer setup, and powers off through SLEEP_CONTROL_REG
    /// (acpi_hw_extended_sleep).
    static let hardwareReduced: UInt32 = 1 << 20

    static let flags = hardwareReduced | resetRegisterSupported
        | powerButtonIsControlMethod | sleepButtonIsControlMethod

    // MARK: IA-PC boot architecture flags

    /// Bit 2: VGA not present. Linux sets x86_platform.legacy.no_vga and
    /// does not poke the VGA ports; Swiftlet has no display.
    static let vgaNotPresent: UInt16 = 1 << 2
    /// Bit 4: OSPM must not enable ASPM. Virtual links have no power states.
    static let pcieASPMControls: UInt16 = 1 << 4
    /// Bit 5: CMOS RTC not present. Linux then registers no rtc_cmos device
    /// (unless the DSDT describes a PNP0B00 one).
    static let cmosRTCNotPresent: UInt16 = 1 << 5

    /// Bit 0 (LEGACY_DEVICES) and bit 1 (8042) stay clear: with FADT
    /// revision >= 2 and no 8042 flag Linux marks the i8042 "firmware absent"
    /// and does not probe it (saving its probe timeout), and reboot goes
    /// through RESET_REG rather than the keyboard controller. Bit 3 (MSI not
    /// supported) stays clear or Linux would disable MSI for PCI devices.
    static func bootArchitectureFlags(cmosRTC: Bool) -> UInt16 {
        vgaNotPresent | pcieASPMControls | (cmosRTC ? 0 : cmosRTCNotPresent)
    }

    /// C2/C3 latencies above 100/1000 µs mean "C2/C3 not supported".
    static let noC2Latency: UInt16 = 101
    static let noC3Latency: UInt16 = 1001

    static let hypervisorVendor: [UInt8] = Array("SWIFTLET".utf8)

    static func make(_ configuration: ACPIConfiguration, dsdtAddress: UInt64) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: length - SystemDescriptionTable.headerLength)
        func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            body.storeLittleEndian(value, at: offset - SystemDescriptionTable.headerLength)
        }
        func store(_ bytes: [UInt8], at offset: Int) {
            let start = offset - SystemDescriptionTable.headerLength
            body.replaceSubrange(start..<start + bytes.count, with: bytes)
        }

        // FIRMWARE_CTRL / X_FIRMWARE_CTRL stay 0: hardware-reduced needs no FACS.
        // The 32-bit DSDT field too when the DSDT is above 4 GiB (X_DSDT wins).
        if let dsdt32 = UInt32(exactly: dsdtAddress) {
            store(dsdt32, at: dsdtOffset)
        }
        store(configuration.sciInterrupt, at: sciInterruptOffset)
        store(noC2Latency, at: c2LatencyOffset)
        store(noC3Latency, at: c3LatencyOffset)
        store(bootArchitectureFlags(cmosRTC: configuration.cmosRTC), at: bootArchitectureFlagsOffset)
        store(flags, at: flagsOffset)
        store(GenericAddress.ioPort8(configuration.resetPort).bytes, at: resetRegisterOffset)
        store(configuration.resetValue, at: resetValueOffset)
        store(minorRevision, at: minorRevisionOffset)
        store(dsdtAddress, at: xDSDTOffset)
        store(GenericAddress.ioPort8(configuration.sleepControlPort).bytes, at: sleepControlOffset)
        store(GenericAddress.ioPort8(configuration.sleepStatusPort).bytes, at: sleepStatusOffset)
        store(hypervisorVendor, at: hypervisorVendorOffset)

        return SystemDescriptionTable.make(signature: "FACP", revision: revision, body: body)
    }
}
