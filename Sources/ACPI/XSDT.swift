/// Extended System Description Table: the 64-bit addresses of every table
/// but the DSDT (which the FADT points at).
enum XSDT {
    static let revision: UInt8 = 1

    static func length(entryCount: Int) -> Int {
        SystemDescriptionTable.headerLength + 8 * entryCount
    }

    static func make(entries: [UInt64]) -> [UInt8] {
        var body: [UInt8] = []
        for address in entries { body.appendLittleEndian(address) }
        return SystemDescriptionTable.make(signature: "XSDT", revision: revision, body: body)
    }
}
