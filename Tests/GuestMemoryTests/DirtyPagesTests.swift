import Glibc
import Testing
@testable import GuestMemory

@Suite("Pages the VMM writes, and diff memory files")
struct DirtyPagesTests {
    @Test("with tracking, every write path marks its pages once, and taking the bitmap clears it; without, nothing is kept")
    func marks() throws {
        let memory = try GuestMemory(ranges: MemoryFileTests.ranges, trackingDirtyPages: true)
        #expect(memory.tracksDirtyPages)
        try memory.write(UInt32(1), at: GuestAddress(0x3000))
        try memory.write(bytes: [1, 2, 3], at: GuestAddress(0x5FFF))  // straddles pages 5 and 6
        try memory.writeShared(7, at: GuestAddress(0x9000))
        try memory.zero(at: GuestAddress(1 << 32) + 0x2000, count: 0x1000)
        try memory.withHostBytes(at: GuestAddress(0x20_000), length: 16) { (_: UnsafeMutableRawBufferPointer) throws(GuestMemoryError) in }
        _ = try memory.read(UInt64.self, at: GuestAddress(0x40_000))
        func pages(_ words: [UInt64]?) -> [Int] {
            guard let words else { return [] }
            return (0..<(words.count * 64)).filter { (words[$0 / 64] >> UInt64($0 % 64)) & 1 == 1 }
        }
        #expect(pages(memory.takeWrittenPages(region: 0)) == [3, 5, 6, 9, 0x20])
        #expect(pages(memory.takeWrittenPages(region: 1)) == [2])
        #expect(pages(memory.takeWrittenPages(region: 0)) == [], "taking clears")
        #expect(try GuestMemory(ranges: MemoryFileTests.ranges).takeWrittenPages(region: 0) == nil)
    }

    @Test("a diff memory file holds only the marked pages, at their layout offsets, over what the file held")
    func diffFile() throws {
        let directory = try MemoryFileTests.temporaryDirectory()
        defer { MemoryFileTests.removeDirectory(directory) }
        let memory = try MemoryFileTests.filledMemory()
        let base = directory + "/base"
        let layout = try memory.writeMemoryFile(to: base)
        try memory.write(UInt64(0x1111), at: GuestAddress(0x4000))
        try memory.write(UInt64(0x2222), at: GuestAddress(1 << 32) + 0x1000)
        var dirty: [[UInt64]] = [[UInt64](repeating: 0, count: 5), [UInt64](repeating: 0, count: 1)]
        dirty[0][0] = 1 << 4
        dirty[1][0] = 1 << 1
        // Onto a fresh file: sparse, full size, only the two pages.
        let fresh = directory + "/diff"
        #expect(try memory.writeDirtyPages(to: fresh, dirty: dirty) == layout)
        var status = stat()
        #expect(stat(fresh, &status) == 0)
        #expect(UInt64(status.st_size) == layout.requiredFileSize)
        #expect(status.st_blocks * 512 <= 4 * 4096, "only the dirty pages are allocated (\(status.st_blocks) blocks)")
        let diffMemory = try GuestMemory(mappingFile: fresh, layout: layout)
        #expect(try diffMemory.read(UInt64.self, at: GuestAddress(0x4000)) == 0x1111)
        #expect(try diffMemory.read(UInt64.self, at: GuestAddress(1 << 32) + 0x1000) == 0x2222)
        #expect(try diffMemory.read(UInt64.self, at: GuestAddress(0x3000)) == 0, "an unmarked page is a hole")
        // Onto the base: the base with the two pages updated equals the memory now.
        #expect(try memory.writeDirtyPages(to: base, dirty: dirty) == layout)
        let merged = try GuestMemory(mappingFile: base, layout: layout)
        for region in memory.regions {
            #expect(try merged.readBytes(at: region.start, count: Int(region.size)) == memory.readBytes(at: region.start, count: Int(region.size)))
        }
    }
}
