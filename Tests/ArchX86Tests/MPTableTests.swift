import Testing
@testable import ArchX86

@Suite("MP table")
struct MPTableTests {
    static func sum(_ bytes: [UInt8]) -> UInt8 { bytes.reduce(UInt8(0)) { $0 &+ $1 } }
    static func u16(_ bytes: [UInt8], _ offset: Int) -> Int { Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 }
    static func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << ($1 * 8) } }

    @Test("the floating pointer and the table check out: signatures, checksums, length, entry count, one enabled processor per vCPU with the first as BSP")
    func layout() {
        for cpus in [1, 4, 254] {
            let (pointer, table) = MPTable.build(cpuCount: cpus, ioAPICID: UInt8(cpus), ioAPICAddress: 0xFEC0_0000,
                                                 localAPICAddress: 0xFEE0_0000, tableAddress: 0x9FC10)
            #expect(pointer.count == 16 && Array(pointer[0..<4]) == Array("_MP_".utf8) && Self.sum(pointer) == 0)
            #expect(Self.u32(pointer, 4) == 0x9FC10 && pointer[8] == 1 && pointer[9] == 4 && pointer[11] == 0, "\(pointer)")
            #expect(Array(table[0..<4]) == Array("PCMP".utf8) && Self.sum(table) == 0)
            #expect(Self.u16(table, 4) == table.count, "base table length")
            #expect(Self.u16(table, 34) == cpus + 1 + 1 + 16 + 2, "entry count")
            #expect(Self.u32(table, 36) == 0xFEE0_0000)
            // Walk the entries as Linux's parser does.
            var offset = 44, processors: [(id: UInt8, flags: UInt8)] = [], ioAPICs: [UInt8] = [], interrupts = 0
            while offset < table.count {
                switch table[offset] {
                case 0: processors.append((table[offset + 1], table[offset + 3])); offset += 20
                case 2: ioAPICs.append(table[offset + 1]); #expect(Self.u32(table, offset + 4) == 0xFEC0_0000); offset += 8
                case 3: #expect(table[offset + 5] == table[offset + 7], "ISA IRQ n on pin n"); interrupts += 1; offset += 8
                case 1, 4: offset += 8
                default: Issue.record("unknown entry type \(table[offset]) at \(offset)"); return
                }
            }
            #expect(offset == table.count)
            #expect(processors.count == cpus && processors.first?.flags == 0b11 && processors.dropFirst().allSatisfy { $0.flags == 0b01 })
            #expect(processors.map(\.id) == (0..<cpus).map { UInt8($0) })
            #expect(ioAPICs == [UInt8(cpus)] && interrupts == 16)
        }
    }

    @Test("the largest table fits between the floating pointer and the RSDP")
    func fits() {
        let (_, table) = MPTable.build(cpuCount: 254, ioAPICID: 254, ioAPICAddress: 0, localAPICAddress: 0, tableAddress: 0)
        #expect(Layout.mpTableStart.rawValue + UInt64(table.count) <= Layout.rsdpStart.rawValue)
        #expect(Layout.mpTableStart.rawValue == Layout.ebdaStart.rawValue + UInt64(MPTable.floatingPointerSize))
    }
}
