import Glibc
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

    @Test("guest RAM is left out of core dumps: each region's mapping carries the dd (MADV_DONTDUMP) flag in /proc/self/smaps")
    func excludedFromCoreDumps() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 0x20_0000), (GuestAddress(1 << 32), 0x10_0000)])
        let smaps = Self.readProcFile("/proc/self/smaps")
        for region in memory.regions {
            let address = UInt(bitPattern: region.hostAddress)
            let flags = try #require(Self.vmFlags(containing: address, in: smaps), "no mapping at \(address) in smaps")
            #expect(flags.contains("dd"), "VmFlags of guest RAM: \(flags)")
        }
    }

    /// The whole of a /proc file (its size reads as 0, so read to the end).
    static func readProcFile(_ path: String) -> String {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { return "" }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The VmFlags of the smaps entry whose range holds `address`.
    static func vmFlags(containing address: UInt, in smaps: String) -> [Substring]? {
        var inside = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let range = fields.first, range.contains("-"), !range.hasSuffix(":") {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inside = bounds.count == 2 && bounds[0] <= address && address < bounds[1]
            } else if inside, fields.first == "VmFlags:" {
                return Array(fields.dropFirst())
            }
        }
        return nil
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

    @Test("read(into:) and ioVector check bounds in every region; ioVector marks the range written")
    func copyOutAndIOVector() throws {
        // Two regions with a hole between them, as below and above the 32-bit gap.
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 0x2000), (GuestAddress(0x10000), 0x1000)], trackingDirtyPages: true)
        try memory.write(bytes: [9, 8, 7, 6], at: GuestAddress(0x10FFC))
        _ = memory.takeWrittenPages(region: 1)
        var out = [UInt8](repeating: 0, count: 4)
        try out.withUnsafeMutableBytes { try memory.read(into: $0, at: GuestAddress(0x10FFC)) }
        #expect(out == [9, 8, 7, 6])
        #expect(throws: GuestMemoryError.outOfBounds(address: GuestAddress(0x10FFD), length: 4)) {
            try out.withUnsafeMutableBytes { try memory.read(into: $0, at: GuestAddress(0x10FFD)) }
        }
        // A range across the hole is in neither region.
        #expect(throws: GuestMemoryError.outOfBounds(address: GuestAddress(0x1FF0), length: 0x20)) {
            try memory.ioVector(at: GuestAddress(0x1FF0), length: 0x20)
        }
        let vector = try memory.ioVector(at: GuestAddress(0x10800), length: 16)
        #expect(vector.iov_len == 16)
        #expect(memory.takeWrittenPages(region: 1) == [1])
        #expect(memory.contains(GuestAddress(0x10FFF)) && !memory.contains(GuestAddress(0x2000)))
    }
}
