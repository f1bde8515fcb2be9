import Testing
@testable import GuestMemory

@Suite("Guest memory")
struct GuestMemoryTests {
    @Test("reads back what was written, including unaligned values")
    func roundTrip() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 0x10000)])
        try memory.write(UInt64(0x1122_3344_5566_7788), at: GuestAddress(0x1001))
        #expect(try memory.read(UInt64.self, at: GuestAddress(0x1001)) == 0x1122_3344_5566_7788)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x1001)) == 0x88)
        try memory.write(bytes: [1, 2, 3], at: GuestAddress(0xFFFD))
        #expect(try memory.readBytes(at: GuestAddress(0xFFFD), count: 3) == [1, 2, 3])
    }

    @Test("refuses accesses that leave a region or wrap around")
    func bounds() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 0x1000), (GuestAddress(0x2000), 0x1000)])
        #expect(throws: GuestMemoryError.outOfBounds(address: GuestAddress(0xFFE), length: 4)) {
            try memory.write(UInt32(1), at: GuestAddress(0xFFE))
        }
        // A range spanning the gap between regions is refused even though both ends are RAM.
        #expect(throws: GuestMemoryError.self) { try memory.readBytes(at: GuestAddress(0xF00), count: 0x1200) }
        #expect(throws: GuestMemoryError.self) { try memory.read(UInt64.self, at: GuestAddress(UInt64.max - 3)) }
        #expect(throws: GuestMemoryError.self) { try memory.read(UInt8.self, at: GuestAddress(0x1000)) }
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x2FFF)) == 0)
    }

    @Test("rejects overlapping or empty regions")
    func layout() {
        #expect(throws: GuestMemoryError.self) {
            try GuestMemory(ranges: [(GuestAddress(0), 0x2000), (GuestAddress(0x1000), 0x1000)])
        }
        #expect(throws: GuestMemoryError.self) { try GuestMemory(ranges: [(GuestAddress(0), 0)]) }
    }

    @Test("address arithmetic reports overflow instead of wrapping")
    func addressArithmetic() {
        #expect(GuestAddress(UInt64.max).adding(1) == nil)
        #expect(GuestAddress(0x1001).alignedUp(to: 0x1000) == GuestAddress(0x2000))
        #expect(GuestAddress(UInt64.max - 1).alignedUp(to: 0x1000) == nil)
        #expect(GuestAddress(0x1001).alignedUp(to: 0x1800) == nil, "not a power of two")
    }
}
