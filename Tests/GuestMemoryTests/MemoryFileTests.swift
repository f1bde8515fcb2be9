import Glibc
import HostSystem
import SnapshotFormat
import Testing
@testable import GuestMemory

@Suite("Snapshot memory file")
struct MemoryFileTests {
    /// Two regions with a hole between them, like the x86 layout, and a
    /// size that is not a whole page so the second region's offset is rounded up.
    static let ranges: [(start: GuestAddress, size: UInt64)] = [(GuestAddress(0), 0x10_0800), (GuestAddress(1 << 32), 0x4_0000)]

    static func filledMemory() throws -> GuestMemory {
        let memory = try GuestMemory(ranges: ranges)
        for (index, range) in ranges.enumerated() {
            // A pattern that differs per page and per region.
            for page in stride(from: UInt64(0), to: range.size, by: 0x1000) {
                try memory.write(UInt64(0xA000_0000_0000_0000) | UInt64(index) << 32 | page, at: range.start + page)
            }
            try memory.write(bytes: [0xEE, 0xFF], at: range.start + (range.size - 2))
        }
        return memory
    }

    @Test("guest RAM written to a memory file and mapped back MAP_PRIVATE has the same contents")
    func roundTrip() throws {
        let directory = try Self.temporaryDirectory()
        defer { Self.removeDirectory(directory) }
        let memory = try Self.filledMemory()
        let path = directory + "/mem"
        let layout = try memory.writeMemoryFile(to: path)
        #expect(layout.regions == [
            GuestMemoryFileLayout.Region(start: GuestAddress(0), size: 0x10_0800, fileOffset: 0),
            GuestMemoryFileLayout.Region(start: GuestAddress(1 << 32), size: 0x4_0000, fileOffset: 0x10_1000),
        ])
        #expect(Self.fileSize(path) == 0x10_1000 + 0x4_0000)
        #expect(Self.entries(directory) == ["mem"])

        let restored = try GuestMemory(mappingFile: path, layout: layout)
        #expect(restored.regions.map(\.start) == memory.regions.map(\.start))
        #expect(restored.regions.map(\.size) == memory.regions.map(\.size))
        for range in Self.ranges {
            #expect(try restored.readBytes(at: range.start, count: Int(range.size)) == memory.readBytes(at: range.start, count: Int(range.size)))
        }
        // Still bounds-checked like anonymous RAM.
        #expect(throws: GuestMemoryError.self) { try restored.read(UInt8.self, at: GuestAddress(0x10_0800)) }
    }

    @Test("writes through the private mapping change the guest's RAM, not the file")
    func privateWrites() throws {
        let directory = try Self.temporaryDirectory()
        defer { Self.removeDirectory(directory) }
        let path = directory + "/mem"
        let layout = try Self.filledMemory().writeMemoryFile(to: path)
        let before = try OwnedFileDescriptor.readWholeFile(path)

        let restored = try GuestMemory(mappingFile: path, layout: layout)
        try restored.write(UInt64(0x1234_5678), at: GuestAddress(0x2000))
        try restored.zero(at: GuestAddress(1 << 32), count: 0x4_0000)
        #expect(try restored.read(UInt64.self, at: GuestAddress(0x2000)) == 0x1234_5678)
        #expect(try OwnedFileDescriptor.readWholeFile(path) == before)
        // A second VM restored from the same file sees the file, not the first VM's writes.
        let clone = try GuestMemory(mappingFile: path, layout: layout)
        #expect(try clone.read(UInt64.self, at: GuestAddress(0x2000)) == 0xA000_0000_0000_2000)
    }

    @Test("restored RAM stays out of core dumps like anonymous RAM")
    func excludedFromCoreDumps() throws {
        let directory = try Self.temporaryDirectory()
        defer { Self.removeDirectory(directory) }
        let path = directory + "/mem"
        let layout = try Self.filledMemory().writeMemoryFile(to: path)
        let restored = try GuestMemory(mappingFile: path, layout: layout)
        let smaps = GuestMemoryTests.readProcFile("/proc/self/smaps")
        for region in restored.regions {
            let flags = try #require(GuestMemoryTests.vmFlags(containing: UInt(bitPattern: region.hostAddress), in: smaps))
            #expect(flags.contains("dd"), "VmFlags of restored guest RAM: \(flags)")
        }
    }

    @Test("a memory file shorter than its layout, a directory or a missing file is refused with a clear error")
    func refusals() throws {
        let directory = try Self.temporaryDirectory()
        defer { Self.removeDirectory(directory) }
        let path = directory + "/mem"
        let layout = try Self.filledMemory().writeMemoryFile(to: path)
        let size = try #require(Self.fileSize(path))
        #expect(truncate(path, off_t(size - 1)) == 0)
        let tooSmall = GuestMemoryError.memoryFileTooSmall(path: path, size: size - 1, needed: size)
        #expect(throws: tooSmall) { try GuestMemory(mappingFile: path, layout: layout) }
        #expect(tooSmall.description == "memory file \(path) is \(size - 1) bytes, smaller than the \(size) its regions need")

        #expect(throws: GuestMemoryError.memoryFileNotRegular(path: directory, kind: "a directory")) {
            try GuestMemory(mappingFile: directory, layout: layout)
        }
        #expect(throws: GuestMemoryError.self) { try GuestMemory(mappingFile: directory + "/missing", layout: layout) }

        // Layouts that cannot be mapped: unaligned offset, wrapping offset, overlapping or no regions.
        let small = GuestMemoryFileLayout.Region(start: GuestAddress(0), size: 0x1000, fileOffset: 0)
        let bad: [[GuestMemoryFileLayout.Region]] = [
            [GuestMemoryFileLayout.Region(start: GuestAddress(0), size: 0x1000, fileOffset: 0x800)],
            [GuestMemoryFileLayout.Region(start: GuestAddress(0), size: 0x1000, fileOffset: UInt64.max - 0xFFF)],
            [small, GuestMemoryFileLayout.Region(start: GuestAddress(0x800), size: 0x1000, fileOffset: 0x1000)],
            [],
        ]
        for regions in bad {
            #expect(throws: GuestMemoryError.self) { try GuestMemory(mappingFile: path, layout: GuestMemoryFileLayout(regions: regions)) }
        }
    }

    @Test("the layout round-trips through a state section and its region count is capped")
    func layoutCoding() throws {
        let layout = try Self.filledMemory().fileLayout
        var encoder = StateEncoder()
        encoder.section(GuestMemoryFileLayout.sectionTag) { layout.encode(into: &$0) }
        var decoder = StateDecoder(encoder.bytes)
        let decoded = try decoder.section(GuestMemoryFileLayout.sectionTag) { (body) throws(StateDecodingError) in
            try GuestMemoryFileLayout(decoding: &body)
        }
        #expect(decoded == layout)

        var tooMany = StateEncoder()
        tooMany.encode(UInt32(65))
        tooMany.append(raw: [UInt8](repeating: 0, count: 65 * 24))
        var tooManyDecoder = StateDecoder(tooMany.bytes)
        #expect(throws: StateDecodingError.lengthOverLimit(offset: 0, length: 65, limit: 64)) {
            try GuestMemoryFileLayout(decoding: &tooManyDecoder)
        }
    }

    @Test("all-zero pages stay holes: a mostly empty RAM gives a file allocating far less than its size, with the same contents")
    func zeroPagesAreHoles() throws {
        let directory = try Self.temporaryDirectory()
        defer { Self.removeDirectory(directory) }
        let size: UInt64 = 64 << 20
        let memory = try GuestMemory(ranges: [(GuestAddress(0), size), (GuestAddress(1 << 32), 0x2_0800)])
        // A few non-zero pages: the first, a run of three, a lone byte at the
        // end of a page, the last byte of RAM, and the partial last page of the second region.
        try memory.write(UInt64(0x1122_3344_5566_7788), at: GuestAddress(0))
        try memory.write(bytes: [UInt8](repeating: 0xAB, count: 3 * 4096), at: GuestAddress(0x10_0000))
        try memory.write(UInt8(1), at: GuestAddress(0x20_0FFF))
        try memory.write(UInt8(2), at: GuestAddress(size - 1))
        try memory.write(UInt8(3), at: GuestAddress((1 << 32) + 0x2_0000))
        let path = directory + "/mem"
        let layout = try memory.writeMemoryFile(to: path)

        var status = stat()
        try #require(stat(path, &status) == 0)
        #expect(UInt64(status.st_size) == size + 0x2_0800)
        // 7 pages of data; file systems may allocate a little more (metadata, extents of 64 KiB).
        let allocated = UInt64(status.st_blocks) * 512
        #expect(allocated < 4 << 20, "allocated \(allocated) bytes of \(status.st_size)")

        let restored = try GuestMemory(mappingFile: path, layout: layout)
        for (original, copy) in zip(memory.regions, restored.regions) {
            #expect(try restored.readBytes(at: copy.start, count: Int(copy.size)) == memory.readBytes(at: original.start, count: Int(original.size)))
        }
        // Holes read as zeros through the file too (not only the mapping).
        let descriptor = open(path, O_RDONLY)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        var page = [UInt8](repeating: 0xFF, count: 4096)
        // SAFETY: the buffer is `page`'s own storage of 4096 bytes.
        let count = page.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, 4096, 0x30_0000) }
        #expect(count == 4096 && page.allSatisfy { $0 == 0 })
    }

    @Test("the zero check finds a single non-zero byte anywhere, in short and long buffers")
    func zeroCheck() {
        for count in [0, 1, 7, 8, 15, 16, 17, 4095, 4096] {
            var bytes = [UInt8](repeating: 0, count: count)
            // SAFETY: the pointer is `bytes`' own storage of `count` bytes, used only within the call.
            #expect(bytes.withUnsafeBytes { buffer in buffer.baseAddress.map { GuestMemory.isZero($0, count: count) } ?? true })
            for position in 0..<count where count < 64 || position % 509 == 0 || position == count - 1 {
                bytes[position] = 0x40
                // SAFETY: as above.
                #expect(!bytes.withUnsafeBytes { buffer in buffer.baseAddress.map { GuestMemory.isZero($0, count: count) } ?? true },
                        "byte \(position) of \(count)")
                bytes[position] = 0
            }
        }
    }

    static func fileSize(_ path: String) -> UInt64? {
        var status = stat()
        return stat(path, &status) == 0 ? UInt64(status.st_size) : nil
    }

    static func temporaryDirectory() throws -> String {
        var template = Array("/tmp/swiftlet-memory-XXXXXX".utf8CString)
        // SAFETY: mkdtemp fills in the NUL-terminated template in place.
        let result = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }
        try #require(result != nil)
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func entries(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            // SAFETY: d_name is a NUL-terminated array inside the entry readdir returned.
            let name = withUnsafePointer(to: entry.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    static func removeDirectory(_ path: String) {
        for name in entries(path) { unlink(path + "/" + name) }
        rmdir(path)
    }
}
