/// Root System Description Pointer, ACPI 2.0+ form (36 bytes). Linux finds
/// it by scanning 0xE0000-0xFFFFF on 16-byte boundaries (or through
/// boot_params.acpi_rsdp_addr / the PVH start info), checks both checksums,
/// and follows the XSDT address. There is no RSDT: revision 2 guests use
/// the XSDT, and RsdtAddress 0 says so.
enum RSDP {
    static let length = 36
    static let revision: UInt8 = 2
    /// The ACPI 1.0 checksum covers the first 20 bytes only.
    static let v1Length = 20
    static let checksumOffset = 8
    static let extendedChecksumOffset = 32

    static func make(xsdtAddress: UInt64) -> [UInt8] {
        var out: [UInt8] = Array("RSD PTR ".utf8)
        out.append(0)  // checksum
        out.append(contentsOf: ACPIIdentity.oemID)
        out.append(revision)
        out.appendLittleEndian(UInt32(0))  // RsdtAddress: no RSDT
        out.appendLittleEndian(UInt32(length))
        out.appendLittleEndian(xsdtAddress)
        out.append(0)  // extended checksum
        out += [0, 0, 0]  // reserved
        out[checksumOffset] = ACPIChecksum.complement(of: out[0..<v1Length])
        out[extendedChecksumOffset] = ACPIChecksum.complement(of: out)
        return out
    }
}
