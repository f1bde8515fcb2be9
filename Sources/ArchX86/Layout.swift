import GuestMemory

/// Every guest physical address and port the VMM places something at, in one
/// place. Guests find these through the boot protocol, e820 and ACPI; nothing
/// else in the VMM hard-codes an address.
public enum Layout {
    // MARK: Low memory (below 1 MiB)

    /// Boot GDT (flat code/data segments used by the first instructions).
    public static let gdtStart = GuestAddress(0x500)
    /// Boot IDT (empty: the guest installs its own before enabling interrupts).
    public static let idtStart = GuestAddress(0x520)
    /// PVH `hvm_start_info`, its module list and its memory map.
    public static let pvhStartInfo = GuestAddress(0x6000)
    public static let pvhModuleList = GuestAddress(0x6040)
    public static let pvhMemoryMap = GuestAddress(0x6100)
    public static let pvhMemoryMapMaxEntries = 128
    /// Linux `boot_params` ("zero page") for the 64-bit boot protocol.
    public static let zeroPage = GuestAddress(0x7000)
    /// Initial stack pointer for the boot vCPU.
    public static let bootStackPointer = GuestAddress(0x8FF0)
    /// Identity page tables for 64-bit entry: PML4, PDPT, and one PD per GiB.
    public static let pml4Start = GuestAddress(0x9000)
    public static let pdptStart = GuestAddress(0xA000)
    public static let pdStart = GuestAddress(0xB000)
    /// Identity-mapped range for 64-bit entry (2 MiB pages).
    public static let identityMappedSize: UInt64 = 4 << 30
    /// Kernel command line (up to `commandLineMaxSize` bytes with its NUL).
    public static let commandLineStart = GuestAddress(0x20000)
    public static let commandLineMaxSize = 0x10000
    /// End of usable conventional memory: the EBDA and BIOS area follow.
    public static let ebdaStart = GuestAddress(0x9FC00)
    /// The MP configuration table, after the floating pointer at the EBDA
    /// (16 bytes) and in the reserved range below the RSDP (254 vCPUs need 5.2 KiB).
    public static let mpTableStart = GuestAddress(0x9FC10)
    /// ACPI: RSDP where guests scan for it, tables after it, up to 1 MiB.
    public static let rsdpStart = GuestAddress(0xE0000)
    public static let acpiTablesStart = GuestAddress(0xE0100)
    public static let acpiTablesEnd = GuestAddress(0x100000)

    // MARK: Kernel and RAM

    /// Where 64-bit kernels are loaded when they do not say otherwise.
    public static let highMemoryStart = GuestAddress(0x100000)

    // MARK: The 32-bit MMIO hole below 4 GiB

    /// RAM stops here and resumes at `ramAbove4GStart` for guests this large.
    public static let mmioHoleStart = GuestAddress(0xC000_0000)
    public static let ramAbove4GStart = GuestAddress(0x1_0000_0000)
    /// PCI ECAM (configuration space), 256 MiB for buses 0-255.
    public static let pciECAMStart = GuestAddress(0xE000_0000)
    public static let pciECAMSize: UInt64 = 0x1000_0000
    /// 32-bit window for PCI BARs, up to the boot timer. Virtio BARs go
    /// here: guests such as the test kit map only the first 4 GiB.
    public static let pciMMIO32Start = GuestAddress(0xC000_0000)
    public static let pciMMIO32Size: UInt64 = bootTimerStart.rawValue - pciMMIO32Start.rawValue
    /// Firecracker's boot-timer device: one page, where Firecracker's x86
    /// layout puts it, just below the virtio-mmio devices.
    public static let bootTimerStart = GuestAddress(0xD000_0000)
    public static let bootTimerSize: UInt64 = 0x1000
    /// virtio-mmio devices: one 4 KiB page each from here, device `n` at
    /// start + n * 4 KiB (Firecracker's spacing), each raising its own GSI
    /// from `virtioMMIOInterrupts`.
    public static let virtioMMIOStart = GuestAddress(0xD000_1000)
    public static let virtioMMIOSize: UInt64 = 0x1000
    /// One GSI per virtio-mmio device, in device order: inputs below 16 that
    /// nothing else uses, so that a kernel without ACPI, which takes the
    /// command line's number as an 8259/ISA IRQ, reaches them too. Not 0
    /// (PIT), 2 (cascade), 4 (COM1), 5 (ACPI GED), 8 (RTC) or 9 (SCI), and
    /// not 16-23 (PCI INTx).
    public static let virtioMMIOInterrupts: [UInt32] = [6, 7, 10, 11, 12, 13, 14, 15, 3, 1]
    /// Where virtio-mmio device `index` decodes and the GSI it raises; nil
    /// past the last GSI.
    public static func virtioMMIODevice(_ index: Int) -> (start: GuestAddress, gsi: UInt32)? {
        guard index >= 0, index < virtioMMIOInterrupts.count else { return nil }
        return (GuestAddress(virtioMMIOStart.rawValue + UInt64(index) * virtioMMIOSize), virtioMMIOInterrupts[index])
    }
    /// 64-bit window for PCI BARs: 64 GiB from the first 1 GiB boundary above
    /// RAM (and above 4 GiB).
    public static let pciMMIO64Size: UInt64 = 64 << 30
    public static func pciMMIO64Start(memorySize: UInt64) -> GuestAddress {
        let ramEnd = memorySize <= mmioHoleStart.rawValue
            ? ramAbove4GStart.rawValue : ramAbove4GStart.rawValue + (memorySize - mmioHoleStart.rawValue)
        let gigabyte: UInt64 = 1 << 30
        return GuestAddress((ramEnd + gigabyte - 1) & ~(gigabyte - 1))
    }
    /// KVM's identity-map page and TSS (three pages) for real-mode emulation on Intel.
    public static let kvmIdentityMapStart = GuestAddress(0xFFFB_C000)
    public static let kvmTSSStart = GuestAddress(0xFFFB_D000)
    /// Local APIC and IO-APIC (fixed by the architecture).
    public static let ioAPICStart = GuestAddress(0xFEC0_0000)
    public static let localAPICStart = GuestAddress(0xFEE0_0000)

    // MARK: Port I/O

    /// 8250 UART COM1 and its IRQ line.
    public static let com1Port: UInt16 = 0x3F8
    public static let com1IRQ: UInt32 = 4
    /// i8042 keyboard controller data and command/status ports (reset line).
    public static let i8042DataPort: UInt16 = 0x60
    public static let i8042CommandPort: UInt16 = 0x64
    /// ACPI hardware-reduced sleep control and status registers (FADT
    /// SLEEP_CONTROL_REG / SLEEP_STATUS_REG), and the reset register.
    public static let acpiSleepControlPort: UInt16 = 0x600
    public static let acpiSleepStatusPort: UInt16 = 0x601
    public static let acpiResetPort: UInt16 = 0x602
    /// Value written to the reset register to reset the machine.
    public static let acpiResetValue: UInt8 = 0x01
    /// SLP_TYP announced for S5 (soft off) in the DSDT's \_S5 package.
    public static let acpiS5SleepType: UInt8 = 5
    /// SCI interrupt announced in the FADT (unused by hardware-reduced ACPI).
    public static let acpiSCIInterrupt: UInt16 = 9
    /// GSI of the ACPI Generic Event Device that presses the power button
    /// (edge-triggered, active-high; no legacy device uses ISA IRQ 5 here).
    public static let acpiGEDInterrupt: UInt32 = 5
}
