import ACPI
import ArchX86
import Boot
import GuestMemory

/// Loads the kernel and initrd and writes everything the guest reads at boot:
/// boot GDT, command line, ACPI tables, e820 map, and the PVH start info or
/// Linux zero page. Returns the CPU state the entry point expects.
enum GuestBoot {
    static func load(kernel: [UInt8], initrd: [UInt8]?, configuration: VMConfiguration,
                     memory: GuestMemory, pci: PCIECAMConfiguration?, mmio: MMIOSetup? = nil) throws(VMMError) -> EntryState {
        do {
            return try loadOrThrow(kernel: kernel, initrd: initrd, configuration: configuration, memory: memory, pci: pci, mmio: mmio)
        } catch let error as BootError {
            throw .boot(step: "cannot boot '\(configuration.kernelPath)'", message: error.description)
        } catch let error as ACPIError {
            throw .boot(step: "building ACPI tables", message: error.description)
        } catch let error as GuestMemoryError {
            throw .memory(step: "writing boot structures", cause: error)
        } catch {
            throw .boot(step: "preparing the guest", message: "\(error)")
        }
    }

    private static func loadOrThrow(kernel: [UInt8], initrd: [UInt8]?, configuration: VMConfiguration,
                                    memory: GuestMemory, pci: PCIECAMConfiguration?, mmio: MMIOSetup?) throws -> EntryState {
        let loaded = try KernelLoader.load(image: kernel, into: memory, highMemoryStart: Layout.highMemoryStart)
        try BootGDT.write(into: memory)

        // Command line: the bzImage header bounds its length; PVH uses our buffer.
        var commandLine = loaded.setupHeader.map { KernelCommandLine(for: $0, capacity: Layout.commandLineMaxSize) }
            ?? KernelCommandLine(maximumLength: Layout.commandLineMaxSize - 1)
        let text = withVirtioMMIODevices(configuration.commandLine, mmio?.commandLineParameters ?? [])
        if !text.isEmpty { try commandLine.append(text) }
        try commandLine.write(into: memory, at: Layout.commandLineStart)

        let tables = try ACPITables.build(
            ACPIConfiguration(
                cpuCount: configuration.cpuCount,
                localAPICAddress: UInt32(Layout.localAPICStart.rawValue),
                ioAPICAddress: UInt32(Layout.ioAPICStart.rawValue),
                sleepControlPort: Layout.acpiSleepControlPort,
                sleepStatusPort: Layout.acpiSleepStatusPort,
                resetPort: Layout.acpiResetPort,
                resetValue: Layout.acpiResetValue,
                s5SleepType: Layout.acpiS5SleepType,
                sciInterrupt: Layout.acpiSCIInterrupt,
                // KVM's default routing wires the in-kernel PIT to IO-APIC pin 0, so no IRQ0→GSI2 override.
                interruptSourceOverrides: [],
                pciECAM: pci,
                // The power button the control API's Shutdown action presses,
                // and the virtio-mmio devices.
                additionalDSDTContent: ACPIPowerButton.aml(gsi: Layout.acpiGEDInterrupt)
                    + ACPIVirtioMMIO.aml(mmio?.acpiDevices ?? [])),
            rsdpAddress: Layout.rsdpStart.rawValue, tablesAddress: Layout.acpiTablesStart.rawValue,
            tablesLimit: Int(Layout.acpiTablesEnd.rawValue - Layout.acpiTablesStart.rawValue))
        try memory.write(bytes: tables.rsdp, at: Layout.rsdpStart)
        try memory.write(bytes: tables.tables, at: Layout.acpiTablesStart)
        // The MP table: Linux finds it at the EBDA instead of scanning the BIOS area.
        let mp = MPTable.build(cpuCount: configuration.cpuCount, ioAPICID: UInt8(clamping: configuration.cpuCount),
                               ioAPICAddress: UInt32(Layout.ioAPICStart.rawValue), localAPICAddress: UInt32(Layout.localAPICStart.rawValue),
                               tableAddress: UInt32(Layout.mpTableStart.rawValue))
        try memory.write(bytes: mp.floatingPointer, at: Layout.ebdaStart)
        try memory.write(bytes: mp.table, at: Layout.mpTableStart)

        let e820 = try E820Map.standard(memory: memory, ebdaStart: Layout.ebdaStart,
                                        highMemoryStart: Layout.highMemoryStart, mmioHoleStart: Layout.mmioHoleStart)

        switch loaded.entry {
        case let .pvh(entry32):
            let initrdLocation = try initrd.map { image in
                try InitrdPlacement.load(image, into: memory, kernelEnd: loaded.kernelEnd, maxAddress: GuestAddress(0xFFFF_FFFF))
            }
            let startInfo = PVHStartInfo(
                commandLineAddress: Layout.commandLineStart, rsdpAddress: Layout.rsdpStart,
                modules: initrdLocation.map { [PVHModule(initrd: $0)] } ?? [], memoryMap: e820.entries)
            try startInfo.write(into: memory, at: Layout.pvhStartInfo, moduleListAt: Layout.pvhModuleList,
                                memoryMapAt: Layout.pvhMemoryMap, memoryMapMaxEntries: Layout.pvhMemoryMapMaxEntries)
            return .protectedMode32(entry: entry32.rawValue, startInfo: Layout.pvhStartInfo.rawValue)

        case let .linux64(entry, setupHeader):
            let initrdLocation = try initrd.map { image in
                try InitrdPlacement.load(image, into: memory, kernelEnd: loaded.kernelEnd,
                                         maxAddress: GuestAddress(UInt64(setupHeader.initrdAddressMax)))
            }
            let parameters = BootParams(setupHeader: setupHeader, commandLineAddress: Layout.commandLineStart,
                                        initrd: initrdLocation, acpiRSDPAddress: Layout.rsdpStart, e820: e820.entries)
            try parameters.write(into: memory, at: Layout.zeroPage)
            let pageTableRoot = try IdentityPageTables.write(into: memory)
            return .longMode64(entry: entry.rawValue, zeroPage: Layout.zeroPage.rawValue, pageTableRoot: pageTableRoot)

        case let .elf64(entry):
            // No boot protocol: a bare 64-bit ELF gets long mode and nothing else.
            let pageTableRoot = try IdentityPageTables.write(into: memory)
            return .longMode64(entry: entry.rawValue, zeroPage: 0, pageTableRoot: pageTableRoot)
        }
    }

    /// The command line with the virtio-mmio announcements added to the
    /// kernel's part: before a ` -- ` that starts the init arguments, else at
    /// the end (where Firecracker puts them).
    static func withVirtioMMIODevices(_ commandLine: String, _ parameters: [String]) -> String {
        guard !parameters.isEmpty else { return commandLine }
        let added = parameters.joined(separator: " ")
        var words = commandLine.split(separator: " ", omittingEmptySubsequences: false)
        guard let separator = words.firstIndex(of: "--") else {
            return commandLine.isEmpty ? added : commandLine + " " + added
        }
        words.insert(Substring(added), at: separator)
        return words.joined(separator: " ")
    }
}
