import ACPI

/// Little-endian reads over a byte array, independent of the module's own
/// encoders so the tests check the bytes rather than re-run the code.
struct Bytes {
    let raw: [UInt8]

    init(_ raw: [UInt8]) { self.raw = raw }
    init<S: Sequence>(_ raw: S) where S.Element == UInt8 { self.raw = Array(raw) }

    var count: Int { raw.count }

    func u8(_ offset: Int) -> UInt8 { raw[offset] }

    func uint(_ offset: Int, width: Int) -> UInt64 {
        (0..<width).reduce(UInt64(0)) { $0 | UInt64(raw[offset + $1]) << (8 * $1) }
    }

    func u16(_ offset: Int) -> UInt16 { UInt16(uint(offset, width: 2)) }
    func u32(_ offset: Int) -> UInt32 { UInt32(uint(offset, width: 4)) }
    func u64(_ offset: Int) -> UInt64 { uint(offset, width: 8) }

    func ascii(_ offset: Int, _ length: Int) -> String {
        String(decoding: raw[offset..<offset + length], as: UTF8.self)
    }

    var checksum: UInt8 { raw.reduce(0, &+) }

    /// Offsets of every occurrence of `needle`.
    func occurrences(of needle: [UInt8]) -> [Int] {
        guard !needle.isEmpty, needle.count <= raw.count else { return [] }
        return (0...(raw.count - needle.count)).filter { raw[$0..<$0 + needle.count].elementsEqual(needle) }
    }
}

/// A built table set seen from the guest's side: tables found by address.
struct GuestView {
    let set: ACPITableSet
    let rsdpAddress: UInt64
    let tablesAddress: UInt64

    static let rsdpAddress: UInt64 = 0xE0000
    static let tablesAddress: UInt64 = 0xE0100
    static let tablesLimit = 0x100000 - 0xE0100

    init(_ configuration: ACPIConfiguration,
         rsdpAddress: UInt64 = GuestView.rsdpAddress,
         tablesAddress: UInt64 = GuestView.tablesAddress) throws {
        set = try ACPITables.build(configuration, rsdpAddress: rsdpAddress, tablesAddress: tablesAddress,
                                   tablesLimit: GuestView.tablesLimit)
        self.rsdpAddress = rsdpAddress
        self.tablesAddress = tablesAddress
    }

    var rsdp: Bytes { Bytes(set.rsdp) }
    var blob: Bytes { Bytes(set.tables) }

    /// The table whose header starts at guest address `address`, or nil if
    /// it (or the length in its header) is outside the blob.
    func table(at address: UInt64) -> Bytes? {
        guard address >= tablesAddress else { return nil }
        let offset = Int(address - tablesAddress)
        guard offset + 36 <= set.tables.count else { return nil }
        let length = Int(blob.u32(offset + 4))
        guard length >= 36, offset + length <= set.tables.count else { return nil }
        return Bytes(set.tables[offset..<offset + length])
    }

    var xsdt: Bytes? { table(at: rsdp.u64(24)) }

    var xsdtEntries: [UInt64] {
        guard let xsdt else { return [] }
        return stride(from: 36, to: xsdt.count, by: 8).map { xsdt.u64($0) }
    }

    /// The table listed in the XSDT with this signature.
    func table(_ signature: String) -> Bytes? {
        xsdtEntries.lazy.compactMap { table(at: $0) }.first { $0.ascii(0, 4) == signature }
    }

    var fadt: Bytes? { table("FACP") }
    var madt: Bytes? { table("APIC") }
    var dsdt: Bytes? { fadt.flatMap { table(at: $0.u64(140)) } }

    /// Every table reachable from the RSDP: the XSDT, what it lists, the DSDT.
    var allTables: [Bytes] {
        ([xsdt] + xsdtEntries.map { table(at: $0) } + [dsdt]).compactMap { $0 }
    }

    /// MADT entries as (type, bytes) after the 44-byte fixed part.
    var madtEntries: [(type: UInt8, bytes: Bytes)] {
        guard let madt else { return [] }
        var entries: [(UInt8, Bytes)] = []
        var offset = 44
        while offset + 2 <= madt.count {
            let length = Int(madt.u8(offset + 1))
            guard length >= 2, offset + length <= madt.count else { break }
            entries.append((madt.u8(offset), Bytes(madt.raw[offset..<offset + length])))
            offset += length
        }
        return entries
    }
}

extension PCIECAMConfiguration {
    static let swiftletPCI = PCIECAMConfiguration(
        base: 0xE000_0000, startBus: 0, endBus: 255,
        mmio32Base: 0xC000_0000, mmio32Size: 0x2000_0000,
        mmio64Base: 0x100_0000_0000, mmio64Size: 0x10_0000_0000)
}

import Testing

extension ACPIConfiguration: CustomTestStringConvertible {
    public var testDescription: String {
        "\(cpuCount) vCPU(s)" + (pciECAM == nil ? "" : ", PCI") + (cmosRTC ? ", RTC" : "")
            + ", \(serialPorts.count) serial port(s)"
    }
}
