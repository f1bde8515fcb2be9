/// Checksums as ACPI defines them: a table is valid when all its bytes sum to
/// zero modulo 256, so each table carries one byte chosen to make that so.
enum ACPIChecksum {}

/// Identity fields stamped into every table header (and the RSDP). Guests log
/// them ("ACPI: FACP 0x... (v06 SWIFTL SWIFTLET ...)") and some drivers match
/// quirks on them, so they stay fixed.
public enum ACPIIdentity {
    /// OEM ID, exactly 6 bytes.
    public static let oemID: [UInt8] = Array("SWIFTL".utf8)
    /// OEM table ID, exactly 8 bytes.
    public static let oemTableID: [UInt8] = Array("SWIFTLET".utf8)
    public static let oemRevision: UInt32 = 1
    /// Creator ID (the "ASL compiler" field), exactly 4 bytes.
    public static let creatorID: [UInt8] = Array("SWFT".utf8)
    public static let creatorRevision: UInt32 = 1
}

/// The 36-byte header that starts every system description table (all
/// tables but the RSDP), and the assembly of header + body into a table.
enum SystemDescriptionTable {
    static let headerLength = 36
    /// Offset of the checksum byte within the header.
    static let checksumOffset = 9

    /// `signature` (4 ASCII bytes) + header + `body`, with the length and
    /// checksum filled in.
    static func make(signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var table: [UInt8] = []
        table.reserveCapacity(headerLength + body.count)
        table.append(contentsOf: Array(signature.utf8.prefix(4)))
        table.appendLittleEndian(UInt32(headerLength + body.count))
        table.append(revision)
        table.append(0)  // checksum, patched below
        table.append(contentsOf: ACPIIdentity.oemID)
        table.append(contentsOf: ACPIIdentity.oemTableID)
        table.appendLittleEndian(ACPIIdentity.oemRevision)
        table.append(contentsOf: ACPIIdentity.creatorID)
        table.appendLittleEndian(ACPIIdentity.creatorRevision)
        table.append(contentsOf: body)
        table[checksumOffset] = ACPIChecksum.complement(of: table)
        return table
    }
}

/// Generic Address Structure (12 bytes): how the FADT names a register,
/// here always a byte-wide port in system I/O space.
struct GenericAddress {
    static let systemIOSpace: UInt8 = 1
    /// Access size code 1 means byte access.
    static let byteAccess: UInt8 = 1

    var spaceID: UInt8
    var bitWidth: UInt8
    var bitOffset: UInt8
    var accessSize: UInt8
    var address: UInt64

    /// An 8-bit register at an I/O port. Linux's ACPICA treats a GAS with
    /// offset 0 and a power-of-two byte width as a plain register and issues
    /// exactly one `outb`/`inb` of that width.
    static func ioPort8(_ port: UInt16) -> GenericAddress {
        GenericAddress(spaceID: systemIOSpace, bitWidth: 8, bitOffset: 0, accessSize: byteAccess, address: UInt64(port))
    }

    /// The all-zero structure: "register not implemented".
    static let none = GenericAddress(spaceID: 0, bitWidth: 0, bitOffset: 0, accessSize: 0, address: 0)

    var bytes: [UInt8] {
        var out: [UInt8] = [spaceID, bitWidth, bitOffset, accessSize]
        out.appendLittleEndian(address)
        return out
    }
}
