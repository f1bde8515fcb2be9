import KVM
import PCI
import Testing

@Suite("MSI-X table")
struct MSIXTests {
    let lines = [CountingLine(), CountingLine(), CountingLine()]
    let router = RecordingRouter()
    let table: MSIXTable

    init() {
        table = MSIXTable(vectors: lines.enumerated().map { MSIVector(gsi: 24 + UInt32($0.offset), line: $0.element) }, router: router)
    }

    /// Programs vector `index` as Linux does: address, data, then unmask.
    func program(_ index: Int, address: UInt64 = 0xFEE0_0000, data: UInt32, unmask: Bool = true) {
        let entry = UInt64(index * 16)
        table.writeTable(offset: entry, size: 4, address & 0xFFFF_FFFF)
        table.writeTable(offset: entry + 4, size: 4, address >> 32)
        table.writeTable(offset: entry + 8, size: 4, UInt64(data))
        if unmask { table.writeTable(offset: entry + 12, size: 4, 0) }
    }

    @Test("the capability announces the table size and locations; only enable and function mask are writable")
    func capability() {
        let (body, mask) = MSIXTable.capability(vectorCount: 3, tableBAR: 0, tableOffset: 0x4000, pbaBAR: 2, pbaOffset: 0x6000)
        #expect(body == [0x02, 0x00, 0x00, 0x40, 0x00, 0x00, 0x02, 0x60, 0x00, 0x00])
        #expect(mask == [0x00, 0xC0] + Array(repeating: 0, count: 8))
        #expect(table.tableSize == 48 && table.pendingBitArraySize == 8)
    }

    @Test("vectors start masked; entries read back what was written, reserved bits as zero")
    func tableContents() {
        #expect(table.readTable(offset: 12, size: 4) == 1)
        program(1, address: 0x1_FEE0_1003, data: 0x4041, unmask: false)
        #expect(table.readTable(offset: 16, size: 4) == 0xFEE0_1000, "the address is DWORD aligned")
        #expect(table.readTable(offset: 20, size: 4) == 1)
        #expect(table.readTable(offset: 24, size: 4) == 0x4041)
        table.writeTable(offset: 28, size: 4, 0xFFFF_FFFF)
        #expect(table.readTable(offset: 28, size: 4) == 1)
        #expect(table.readTable(offset: 16, size: 8) == 0x1_FEE0_1000)
        // Past the table: zero, and writes there change nothing.
        table.writeTable(offset: 48, size: 8, UInt64.max)
        #expect(table.readTable(offset: 48, size: 8) == 0)
        #expect(table.readTable(offset: UInt64.max - 2, size: 4) == 0)
    }

    @Test("with MSI-X off, signalling says so and nothing is sent")
    func disabled() {
        program(0, data: 0x30)
        #expect(table.signal(0) == .disabled)
        #expect(lines[0].value == 0)
    }

    @Test("an unmasked vector is routed to its message and delivered through its line")
    func delivery() {
        table.setControl(MSIXTable.enableBit)
        program(2, address: 0xFEE0_0000, data: 0x31)
        #expect(router.recorded.last?.gsi == 26)
        #expect(router.recorded.last?.message == MSIMessage(address: 0xFEE0_0000, data: 0x31))
        #expect(table.signal(2) == .delivered)
        #expect(lines[2].value == 1 && lines[0].value == 0)
        #expect(table.signal(7) == .noVector)
        #expect(table.signal(0xFFFF) == .noVector)
        // An unchanged message is not routed again.
        let routes = router.recorded.count
        table.writeTable(offset: 2 * 16 + 8, size: 4, 0x31)
        #expect(router.recorded.count == routes)
    }

    @Test("a masked vector's interrupt sets its pending bit and is sent on unmask")
    func vectorMask() {
        table.setControl(MSIXTable.enableBit)
        program(1, data: 0x32, unmask: false)
        #expect(table.signal(1) == .pending)
        #expect(lines[1].value == 0 && table.isPending(1))
        #expect(table.readPendingBits(offset: 0, size: 8) == 0b010)
        table.writeTable(offset: 16 + 12, size: 4, 0)
        #expect(lines[1].value == 1 && !table.isPending(1))
        #expect(table.readPendingBits(offset: 0, size: 8) == 0)
        #expect(router.recorded.contains { $0.gsi == 25 && $0.message.data == 0x32 })
    }

    @Test("the function mask holds every vector's interrupt until it is cleared")
    func functionMask() {
        table.setControl(MSIXTable.enableBit | MSIXTable.functionMaskBit)
        program(0, data: 0x40)
        program(1, data: 0x41)
        #expect(table.signal(0) == .pending && table.signal(1) == .pending)
        #expect(lines[0].value == 0 && lines[1].value == 0)
        table.setControl(MSIXTable.enableBit)
        #expect(lines[0].value == 1 && lines[1].value == 1)
        #expect(table.signal(0) == .delivered && lines[0].value == 2)
    }

    @Test("pending bits read by byte; past the array they read zero")
    func pendingBits() {
        table.setControl(MSIXTable.enableBit)
        #expect(table.signal(0) == .pending && table.signal(2) == .pending)
        #expect(table.readPendingBits(offset: 0, size: 1) == 0b101)
        #expect(table.readPendingBits(offset: 8, size: 8) == 0)
    }
}

extension MSIXTable {
    func readTable(offset: UInt64, size: Int) -> UInt64 {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { readTable(offset: offset, into: $0) }
        return bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    func writeTable(offset: UInt64, size: Int, _ value: UInt64) {
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
        bytes.withUnsafeBytes { writeTable(offset: offset, from: $0) }
    }

    func readPendingBits(offset: UInt64, size: Int) -> UInt64 {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { readPendingBits(offset: offset, into: $0) }
        return bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }
}



@Suite("KVM GSI routing table")
struct GSIRoutingTests {
    @Test("every table keeps KVM's default irqchip routes: GSIs 0-15 to PIC and IO-APIC, 16-23 to the IO-APIC")
    func defaultRoutes() {
        let routes = GSIRoute.defaultIRQChipRoutes
        #expect(routes.count == 16 * 2 + 8)
        #expect(routes.contains(.irqchip(gsi: 4, chip: .picMaster, pin: 4)))
        #expect(routes.contains(.irqchip(gsi: 4, chip: .ioAPIC, pin: 4)))
        #expect(routes.contains(.irqchip(gsi: 9, chip: .picSlave, pin: 1)))
        #expect(routes.contains(.irqchip(gsi: 17, chip: .ioAPIC, pin: 17)))
        #expect(!routes.contains { $0.gsi >= 24 })
        #expect(Set(routes.map(\.gsi)) == Set(0..<24))
    }
}
