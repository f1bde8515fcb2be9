/// PCI Express memory-mapped configuration space table: one allocation for
/// segment 0. Linux uses ECAM only if this range is also reserved, in the
/// e820 map or by a PNP0C02 device in the DSDT (the DSDT adds one).
enum MCFG {
    static let revision: UInt8 = 1

    static func make(_ pci: PCIECAMConfiguration) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: 8)  // reserved
        body.appendLittleEndian(pci.base)
        body.appendLittleEndian(UInt16(0))  // PCI segment group
        body += [pci.startBus, pci.endBus]
        body.appendLittleEndian(UInt32(0))  // reserved
        return SystemDescriptionTable.make(signature: "MCFG", revision: revision, body: body)
    }
}
