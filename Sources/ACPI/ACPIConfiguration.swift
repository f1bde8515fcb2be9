/// Everything about the guest platform the tables describe. The ACPI module
/// decides nothing about the guest layout: addresses, ports and interrupt
/// numbers all come from here, and the defaults are those of Swiftlet's
/// x86_64 layout (ArchX86.Layout).
public struct ACPIConfiguration: Sendable, Equatable {
    /// The MADT lists xAPIC entries only: APIC ID 0xFF is the broadcast ID,
    /// and one more ID is left for the IO-APIC.
    public static let maxCPUCount = 254

    /// One MADT Processor Local APIC entry per vCPU, APIC IDs (and ACPI
    /// processor UIDs) 0..<cpuCount; vCPU 0 is the boot processor.
    public var cpuCount: Int
    public var localAPICAddress: UInt32
    public var ioAPICAddress: UInt32
    /// Must not be one of the vCPU APIC IDs. `init` defaults it to
    /// `cpuCount` (the first free ID); set it again if `cpuCount` grows.
    public var ioAPICID: UInt8
    /// FADT SLEEP_CONTROL_REG: 8-bit I/O register. To power off, Linux writes
    /// `ACPISleepControl.value(sleepType: s5SleepType)` here.
    public var sleepControlPort: UInt16
    /// FADT SLEEP_STATUS_REG: 8-bit I/O register. Linux writes 0x80 (WAK_STS,
    /// write-one-to-clear) here just before it writes the sleep control
    /// register, and may read it; reading 0 is fine.
    public var sleepStatusPort: UInt16
    /// FADT RESET_REG: 8-bit I/O register. Linux reboots by writing `resetValue` here.
    public var resetPort: UInt16
    public var resetValue: UInt8
    /// SLP_TYP of the S5 (soft-off) state, announced by the DSDT's \_S5 package.
    public var s5SleepType: UInt8
    /// FADT SCI_INT. Hardware-reduced ACPI has no SCI, so Linux does not
    /// request it; it is announced (with a level/active-high override when
    /// it is an ISA IRQ) for consistency with the FADT.
    public var sciInterrupt: UInt16
    /// MADT Interrupt Source Overrides besides the SCI one (which is derived
    /// from `sciInterrupt`). The default maps ISA IRQ 0 (PIT) to GSI 2.
    public var interruptSourceOverrides: [InterruptSourceOverride]
    /// 16550 UARTs described in the DSDT (_HID PNP0501). A hardware-reduced
    /// Linux guest has no legacy PIC and so no fixed ISA IRQ numbers: the
    /// 8250 driver only gets a working interrupt for a port the DSDT
    /// describes with its GSI.
    public var serialPorts: [SerialPort]
    /// Whether the VMM emulates a CMOS RTC (ports 0x70/0x71, GSI 8). When
    /// false the FADT says "CMOS RTC not present" and Linux does not probe
    /// it; when true the DSDT describes it as PNP0B00.
    public var cmosRTC: Bool
    /// When set: an MCFG table, a PCIe root bridge \_SB.PCI0 and a
    /// motherboard-resources device reserving the ECAM range.
    public var pciECAM: PCIECAMConfiguration?
    /// Raw AML appended to the DSDT's definition block, for devices this
    /// module does not know (use `AML` to encode it).
    public var additionalDSDTContent: [UInt8]

    public init(
        cpuCount: Int,
        localAPICAddress: UInt32 = 0xFEE0_0000,
        ioAPICAddress: UInt32 = 0xFEC0_0000,
        ioAPICID: UInt8? = nil,
        sleepControlPort: UInt16 = 0x600,
        sleepStatusPort: UInt16 = 0x601,
        resetPort: UInt16 = 0x602,
        resetValue: UInt8 = 0x01,
        s5SleepType: UInt8 = 5,
        sciInterrupt: UInt16 = 9,
        interruptSourceOverrides: [InterruptSourceOverride] = [.isaTimerToGSI2],
        serialPorts: [SerialPort] = [.com1],
        cmosRTC: Bool = false,
        pciECAM: PCIECAMConfiguration? = nil,
        additionalDSDTContent: [UInt8] = []
    ) {
        self.cpuCount = cpuCount
        self.localAPICAddress = localAPICAddress
        self.ioAPICAddress = ioAPICAddress
        // The first ID after the vCPUs' own, clamped into UInt8 (an invalid
        // cpuCount is reported by `build`, not here).
        self.ioAPICID = ioAPICID ?? UInt8(clamping: max(cpuCount, 0))
        self.sleepControlPort = sleepControlPort
        self.sleepStatusPort = sleepStatusPort
        self.resetPort = resetPort
        self.resetValue = resetValue
        self.s5SleepType = s5SleepType
        self.sciInterrupt = sciInterrupt
        self.interruptSourceOverrides = interruptSourceOverrides
        self.serialPorts = serialPorts
        self.cmosRTC = cmosRTC
        self.pciECAM = pciECAM
        self.additionalDSDTContent = additionalDSDTContent
    }
}

/// A MADT Interrupt Source Override: ISA IRQ `source` arrives on IO-APIC
/// input `gsi` with the given polarity and trigger mode.
public struct InterruptSourceOverride: Sendable, Equatable {
    public enum Polarity: UInt16, Sendable {
        case conformsToBus = 0b00, activeHigh = 0b01, activeLow = 0b11
    }

    public enum TriggerMode: UInt16, Sendable {
        case conformsToBus = 0b00, edge = 0b01, level = 0b11
    }

    public var source: UInt8
    public var gsi: UInt32
    public var polarity: Polarity
    public var triggerMode: TriggerMode

    public init(source: UInt8, gsi: UInt32, polarity: Polarity = .conformsToBus, triggerMode: TriggerMode = .conformsToBus) {
        self.source = source
        self.gsi = gsi
        self.polarity = polarity
        self.triggerMode = triggerMode
    }

    /// ISA IRQ 0 (PIT) on GSI 2, as on PC hardware and as QEMU-style GSI
    /// routing wires KVM's in-kernel PIT. KVM's default routing table sends
    /// GSI 0 to IO-APIC pin 0 instead; a hardware-reduced Linux guest never
    /// uses ISA IRQ 0, so this only matters to other guests.
    public static let isaTimerToGSI2 = InterruptSourceOverride(source: 0, gsi: 2)

    /// The MPS INTI flags field.
    var flags: UInt16 { polarity.rawValue | triggerMode.rawValue << 2 }
}

/// A 16550-compatible UART at `ioBase` (8 ports) raising IO-APIC input `gsi`
/// (edge-triggered, active-high, as the ISA serial line is).
public struct SerialPort: Sendable, Equatable {
    public var ioBase: UInt16
    public var gsi: UInt32

    public init(ioBase: UInt16, gsi: UInt32) {
        self.ioBase = ioBase
        self.gsi = gsi
    }

    /// COM1: ports 0x3F8-0x3FF, IRQ 4.
    public static let com1 = SerialPort(ioBase: 0x3F8, gsi: 4)
}

/// PCI Express enhanced configuration access (ECAM) and the host bridge's
/// address windows.
public struct PCIECAMConfiguration: Sendable, Equatable {
    /// Address of bus 0's configuration space, as the MCFG defines it: bus
    /// `b`, device `d`, function `f` lives at base + (b << 20 | d << 15 | f << 12),
    /// whatever `startBus` is. Must be 1 MiB aligned.
    public var base: UInt64
    public var startBus: UInt8
    public var endBus: UInt8
    /// Window below 4 GiB for 32-bit BARs (omitted from _CRS when the size is 0).
    public var mmio32Base: UInt32
    public var mmio32Size: UInt32
    /// Window above 4 GiB for 64-bit BARs (omitted from _CRS when the size is 0).
    public var mmio64Base: UInt64
    public var mmio64Size: UInt64
    /// INTx wiring of bus 0, published as PCI0._PRT (omitted when empty, for
    /// guests that use MSI/MSI-X only).
    public var interruptRoutes: [PCIInterruptRoute]

    public init(
        base: UInt64, startBus: UInt8 = 0, endBus: UInt8 = 255,
        mmio32Base: UInt32, mmio32Size: UInt32,
        mmio64Base: UInt64 = 0, mmio64Size: UInt64 = 0,
        interruptRoutes: [PCIInterruptRoute] = []
    ) {
        self.base = base
        self.startBus = startBus
        self.endBus = endBus
        self.mmio32Base = mmio32Base
        self.mmio32Size = mmio32Size
        self.mmio64Base = mmio64Base
        self.mmio64Size = mmio64Size
        self.interruptRoutes = interruptRoutes
    }

    /// The configuration space actually decoded: buses startBus...endBus.
    var ecamRangeStart: UInt64 { base + UInt64(startBus) << 20 }
    var ecamRangeSize: UInt64 { UInt64(Int(endBus) - Int(startBus) + 1) << 20 }
}

/// One _PRT entry: INTx pin `pin` (0 = INTA# ... 3 = INTD#) of device
/// `device` on bus 0 drives global system interrupt `gsi` (an IO-APIC input;
/// level-triggered, active-low, as ACPI defines for _PRT entries without a
/// link device).
public struct PCIInterruptRoute: Sendable, Equatable {
    public var device: UInt8
    public var pin: UInt8
    public var gsi: UInt32

    public init(device: UInt8, pin: UInt8, gsi: UInt32) {
        self.device = device
        self.pin = pin
        self.gsi = gsi
    }
}

/// The hardware-reduced sleep control register as Linux (ACPICA's
/// acpi_hw_extended_sleep) writes it: SLP_TYP in bits 2-4, SLP_EN in bit 5.
public enum ACPISleepControl {
    public static let sleepEnable: UInt8 = 1 << 5
    public static let sleepTypeShift: UInt8 = 2
    public static let sleepTypeMask: UInt8 = 0b111 << 2

    /// The byte Linux writes to enter the sleep state `sleepType`, e.g. 0x34 for S5 = 5.
    public static func value(sleepType: UInt8) -> UInt8 {
        ((sleepType << sleepTypeShift) & sleepTypeMask) | sleepEnable
    }

    /// The sleep type requested by a byte written to the sleep control
    /// register, or nil when SLP_EN is clear (no transition requested).
    public static func requestedSleepType(written value: UInt8) -> UInt8? {
        guard value & sleepEnable != 0 else { return nil }
        return (value & sleepTypeMask) >> sleepTypeShift
    }
}
