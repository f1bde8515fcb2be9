/// Differentiated System Description Table: the AML namespace. A static
/// description only (no methods): the \_S5 sleep package that lets Linux
/// power off, the legacy devices a hardware-reduced guest cannot find on its
/// own, and, with PCI, the host bridge. vCPUs need no Processor/Device
/// objects: Linux enumerates them from the MADT.
enum DSDT {
    /// Revision 2: integers are 64-bit.
    static let revision: UInt8 = 2
    /// Names COM1...COM9.
    static let maxSerialPorts = 9

    /// The CMOS RTC's fixed ports and ISA IRQ.
    static let rtcPort: UInt16 = 0x70
    static let rtcGSI: UInt32 = 8

    static func make(_ configuration: ACPIConfiguration) throws(ACPIError) -> [UInt8] {
        var body = try s5Package(sleepType: configuration.s5SleepType)

        var systemBus: [[UInt8]] = []
        for (index, port) in configuration.serialPorts.enumerated() {
            systemBus.append(try serialPort(port, number: index + 1))
        }
        if configuration.cmosRTC {
            systemBus.append(try cmosRTC())
        }
        if let pci = configuration.pciECAM {
            systemBus.append(try pciRootBridge(pci))
            systemBus.append(try ecamReservation(pci))
        }
        if !systemBus.isEmpty {
            body += try AML.scope("\\_SB", systemBus)
        }
        body += configuration.additionalDSDTContent
        return SystemDescriptionTable.make(signature: "DSDT", revision: revision, body: body)
    }

    /// Name(_S5, Package(){SLP_TYPa, SLP_TYPb, reserved, reserved}). ACPICA
    /// reads the first element as the value for SLEEP_CONTROL_REG.SLP_TYP.
    static func s5Package(sleepType: UInt8) throws(ACPIError) -> [UInt8] {
        try AML.name("_S5", AML.package([
            AML.integer(UInt64(sleepType)), AML.integer(0), AML.integer(0), AML.integer(0),
        ]))
    }

    /// Device(COMn): a 16550 (PNP0501) with its ports and its GSI, edge,
    /// active-high. Linux's 8250_pnp binds to it and maps the GSI through the
    /// IO-APIC; without it a hardware-reduced guest's ttyS0 has no IRQ.
    static func serialPort(_ port: SerialPort, number: Int) throws(ACPIError) -> [UInt8] {
        try AML.device("COM\(number)", [
            AML.name("_HID", AML.eisaID("PNP0501")),
            AML.name("_UID", AML.integer(UInt64(number))),
            AML.name("_CRS", AML.resourceTemplate([
                AML.Resource.io(minimum: port.ioBase, maximum: port.ioBase, alignment: 1, length: 8),
                AML.Resource.extendedInterrupt([port.gsi]),
            ])),
        ])
    }

    /// Device(RTC): a PC-AT CMOS RTC (PNP0B00), ports 0x70-0x71, GSI 8.
    static func cmosRTC() throws(ACPIError) -> [UInt8] {
        try AML.device("RTC", [
            AML.name("_HID", AML.eisaID("PNP0B00")),
            AML.name("_CRS", AML.resourceTemplate([
                AML.Resource.io(minimum: rtcPort, maximum: rtcPort, alignment: 1, length: 2),
                AML.Resource.extendedInterrupt([rtcGSI]),
            ])),
        ])
    }

    /// Device(PCI0): PCI Express root bridge (PNP0A08, compatible with
    /// PNP0A03), segment 0, decoding the configured buses, the legacy config
    /// ports 0xCF8-0xCFF and the MMIO windows BARs are assigned from. No
    /// _OSC: Linux then leaves PCIe native features (hotplug, AER, PME) to
    /// the platform and disables ASPM, neither of which virtual devices need.
    /// _PRT (when routes are given) maps each device's INTx pins straight to
    /// IO-APIC inputs (source 0, no link devices), for drivers without MSI-X.
    static func pciRootBridge(_ pci: PCIECAMConfiguration) throws(ACPIError) -> [UInt8] {
        var resources: [[UInt8]] = [
            AML.Resource.wordBusNumber(UInt16(pci.startBus)...UInt16(pci.endBus)),
            AML.Resource.io(minimum: 0x0CF8, maximum: 0x0CF8, alignment: 1, length: 8),
        ]
        if pci.mmio32Size > 0 {
            resources.append(AML.Resource.dwordMemory(pci.mmio32Base...(pci.mmio32Base + (pci.mmio32Size - 1))))
        }
        if pci.mmio64Size > 0 {
            resources.append(AML.Resource.qwordMemory(pci.mmio64Base...(pci.mmio64Base + (pci.mmio64Size - 1))))
        }
        var terms = [
            try AML.name("_HID", AML.eisaID("PNP0A08")),
            try AML.name("_CID", AML.eisaID("PNP0A03")),
            try AML.name("_SEG", AML.integer(0)),
            try AML.name("_BBN", AML.integer(UInt64(pci.startBus))),
            try AML.name("_UID", AML.integer(0)),
            try AML.name("_CRS", AML.resourceTemplate(resources)),
        ]
        if !pci.interruptRoutes.isEmpty {
            terms.append(try AML.name("_PRT", interruptRoutingTable(pci.interruptRoutes)))
        }
        return try AML.device("PCI0", terms)
    }

    /// Package of Package(){Address (device << 16 | 0xFFFF: any function),
    /// Pin, Source (0: a GSI, not a link device), Source Index (the GSI)}.
    static func interruptRoutingTable(_ routes: [PCIInterruptRoute]) throws(ACPIError) -> [UInt8] {
        var entries: [[UInt8]] = []
        for route in routes {
            entries.append(try AML.package([
                AML.integer(UInt64(route.device) << 16 | 0xFFFF), AML.integer(UInt64(route.pin)),
                AML.integer(0), AML.integer(UInt64(route.gsi)),
            ]))
        }
        return try AML.package(entries)
    }

    /// Device(MBRD): motherboard resources (PNP0C02) claiming the ECAM range
    /// of the decoded buses. Linux's pci_mmcfg_late_init refuses MMCONFIG
    /// ("not reserved in ACPI motherboard resources") unless the range is
    /// reserved here or in the e820 map.
    static func ecamReservation(_ pci: PCIECAMConfiguration) throws(ACPIError) -> [UInt8] {
        let start = pci.ecamRangeStart
        let size = pci.ecamRangeSize
        let descriptor: [UInt8]
        if let start32 = UInt32(exactly: start), let size32 = UInt32(exactly: size),
           UInt64(start32) + UInt64(size32) <= 1 << 32 {
            descriptor = AML.Resource.memory32Fixed(base: start32, length: size32)
        } else {
            descriptor = AML.Resource.qwordMemory(start...(start + (size - 1)), consumer: true)
        }
        return try AML.device("MBRD", [
            AML.name("_HID", AML.eisaID("PNP0C02")),
            AML.name("_UID", AML.integer(0)),
            AML.name("_CRS", AML.resourceTemplate([descriptor])),
        ])
    }
}
