import GuestMemory
import Testing

@testable import Boot

@Suite("ELF loading")
struct ELFLoaderTests {
    let high = GuestAddress(0x100000)

    func memory() throws -> GuestMemory { try makeMemory([(GuestAddress(0), 16 * MiB)]) }

    /// Text at 1 MiB, then data with a bss, the PVH note pointing into the text.
    func kernel(notes: [ELFBuilder.Note] = [ELFBuilder.pvhNote(entry32: 0x100040)]) -> ELFBuilder {
        var builder = ELFBuilder()
        builder.entry = 0x100000
        builder.segments = [
            .init(physicalAddress: 0x100000, data: [UInt8](repeating: 0xC3, count: 0x300), memorySize: 0x300),
            .init(physicalAddress: 0x200000, data: [1, 2, 3, 4, 5, 6, 7, 8], memorySize: 0x2000),
        ]
        builder.notes = notes
        return builder
    }

    @Test("finds the 32-bit PVH entry note, loads segments at p_paddr and zeroes the bss")
    func pvhKernel() throws {
        let memory = try memory()
        // Dirty the bss first, as a previous boot could have.
        try memory.write(bytes: [UInt8](repeating: 0xEE, count: 0x3000), at: GuestAddress(0x200000))
        let loaded = try KernelLoader.load(image: kernel().build(), into: memory, highMemoryStart: high)
        #expect(loaded.entry == .pvh(entry32: GuestAddress(0x100040)))
        #expect(loaded.loadAddress == GuestAddress(0x100000))
        #expect(loaded.kernelEnd == GuestAddress(0x202000))
        #expect(try memory.readBytes(at: GuestAddress(0x100000), count: 0x300) == [UInt8](repeating: 0xC3, count: 0x300))
        #expect(try memory.readBytes(at: GuestAddress(0x200000), count: 8) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(try memory.readBytes(at: GuestAddress(0x200008), count: 0x2000 - 8).allSatisfy { $0 == 0 })
        // Beyond p_memsz is left alone.
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x202000)) == 0xEE)
    }

    @Test("skips other notes and accepts a 64-bit PVH descriptor")
    func otherNotesAnd64BitDescriptor() throws {
        var descriptor = [UInt8](repeating: 0, count: 8)
        descriptor.put(UInt64(0x100080), 0)
        let notes: [ELFBuilder.Note] = [
            .init(name: "GNU", type: 3, descriptor: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]),
            .init(name: "Xen", type: 6, descriptor: Array("linux".utf8)),  // XEN_ELFNOTE_GUEST_OS
            .init(name: "Linux", type: 18, descriptor: [0, 0, 0x20, 0]),  // right type, wrong owner
            .init(name: "Xen", type: 18, descriptor: descriptor),
        ]
        let loaded = try KernelLoader.load(image: kernel(notes: notes).build(), into: memory(), highMemoryStart: high)
        #expect(loaded.entry == .pvh(entry32: GuestAddress(0x100080)))
    }

    @Test("finds the PVH note in an SHT_NOTE section when no PT_NOTE segment has it")
    func noteInSection() throws {
        var builder = kernel()
        builder.notesInSection = true
        let loaded = try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        #expect(loaded.entry == .pvh(entry32: GuestAddress(0x100040)))
    }

    @Test("an ELF without a PVH note enters at e_entry")
    func noPVHNote() throws {
        var builder = kernel(notes: [])
        builder.entry = 0x100010
        let loaded = try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        #expect(loaded.entry == .elf64(entry: GuestAddress(0x100010)))
        #expect(loaded.setupHeader == nil)
    }

    @Test("an image with neither magic is refused, showing its first bytes")
    func badMagic() throws {
        var image = kernel().build()
        image[0] = 0x7E
        #expect(throws: BootError.unrecognizedImage(firstBytes: [0x7E, 0x45, 0x4C, 0x46, 2, 1, 1, 0])) {
            try KernelLoader.load(image: image, into: memory(), highMemoryStart: high)
        }
        #expect(BootError.unrecognizedImage(firstBytes: [0x7E, 0x45]).description
            .hasPrefix("not an ELF vmlinux or a bzImage: first bytes 7e 45"))
        #expect(throws: BootError.unrecognizedImage(firstBytes: [])) {
            try KernelLoader.load(image: [], into: memory(), highMemoryStart: high)
        }
    }

    @Test("refuses 32-bit, big-endian, non-x86-64 and non-executable ELFs")
    func identification() throws {
        var builder = kernel()
        builder.elfClass = 1
        #expect(throws: BootError.elfNotClass64(found: 1)) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
        #expect(BootError.elfNotClass64(found: 1).description.contains("32-bit"))
        builder = kernel()
        builder.dataEncoding = 2
        #expect(throws: BootError.elfNotLittleEndian(found: 2)) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
        builder = kernel()
        builder.machine = 3
        #expect(throws: BootError.elfWrongMachine(found: 3)) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
        builder = kernel()
        builder.type = 3
        #expect(throws: BootError.elfWrongType(found: 3)) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
        #expect(throws: BootError.elfHeaderTruncated(fileSize: 40)) {
            try KernelLoader.load(image: Array(kernel().build().prefix(40)), into: memory(), highMemoryStart: high)
        }
    }

    @Test("refuses a program header table that runs past the end of the file")
    func truncatedProgramHeaders() throws {
        let image = Array(kernel().build().prefix(64 + 56 + 20))
        #expect(throws: BootError.elfProgramHeadersOutsideFile(offset: 64, count: 3, fileSize: 140)) {
            try KernelLoader.load(image: image, into: memory(), highMemoryStart: high)
        }
        var huge = kernel().build()
        huge.put(UInt64.max - 8, 32)  // e_phoff near 2^64: the bounds check must not wrap
        #expect(throws: BootError.elfProgramHeadersOutsideFile(offset: UInt64.max - 8, count: 3, fileSize: huge.count)) {
            try KernelLoader.load(image: huge, into: memory(), highMemoryStart: high)
        }
        var badSize = kernel().build()
        badSize.put(UInt16(32), 54)
        #expect(throws: BootError.elfBadProgramHeaderSize(found: 32)) {
            try KernelLoader.load(image: badSize, into: memory(), highMemoryStart: high)
        }
    }

    @Test("refuses a segment whose file bytes lie outside the file")
    func segmentOutsideFile() throws {
        var image = kernel().build()
        image.put(UInt64(0x10_0000), 64 + 56 + 32)  // segment 1 p_filesz
        image.put(UInt64(0x10_0000), 64 + 56 + 40)  // keep p_memsz >= p_filesz
        let offset = try #require(image.le(UInt64.self, 64 + 56 + 8))
        #expect(throws: BootError.elfSegmentOutsideFile(index: 1, offset: offset, fileSize: 0x10_0000, imageSize: image.count)) {
            try KernelLoader.load(image: image, into: memory(), highMemoryStart: high)
        }
    }

    @Test("refuses p_filesz larger than p_memsz")
    func fileSizeExceedsMemorySize() throws {
        var builder = kernel()
        builder.segments[1].memorySize = 4
        #expect(throws: BootError.elfSegmentFileSizeExceedsMemorySize(index: 1, fileSize: 8, memorySize: 4)) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
    }

    @Test("refuses a segment outside guest RAM and writes nothing")
    func segmentOutsideRAM() throws {
        let memory = try memory()
        var builder = kernel()
        builder.segments[1].physicalAddress = 16 * MiB - 0x1000  // bss runs past the end of RAM
        #expect(throws: BootError.elfSegmentOutsideMemory(index: 1, address: GuestAddress(16 * MiB - 0x1000), memorySize: 0x2000)) {
            try KernelLoader.load(image: builder.build(), into: memory, highMemoryStart: high)
        }
        // Segment 0 was valid but must not have been written either.
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x100000)) == 0)

        builder.segments[1].physicalAddress = UInt64.max - 4  // address + size wraps
        #expect(throws: BootError.elfSegmentOutsideMemory(index: 1, address: GuestAddress(UInt64.max - 4), memorySize: 0x2000)) {
            try KernelLoader.load(image: builder.build(), into: memory, highMemoryStart: high)
        }
    }

    @Test("refuses a segment below the high-memory start")
    func segmentBelowHighMemory() throws {
        var builder = kernel()
        builder.segments[0].physicalAddress = 0x7000
        #expect(throws: BootError.elfSegmentBelowHighMemory(index: 0, address: GuestAddress(0x7000), highMemoryStart: high)) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
    }

    @Test("refuses an ELF with nothing to load")
    func noLoadableSegment() throws {
        var builder = kernel()
        builder.segments = []
        #expect(throws: BootError.elfNoLoadableSegment) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
    }

    @Test("a note with a huge namesz gives a clear error, not a crash")
    func hugeNameSize() throws {
        var builder = kernel(notes: [])
        var note = ELFBuilder.encode([ELFBuilder.pvhNote(entry32: 0x100040)])
        note.put(UInt32.max, 0)  // namesz: aligning it up must not overflow
        builder.rawNotes = note
        let image = builder.build()
        let noteOffset = UInt64(image.count - note.count)
        #expect(throws: BootError.elfNoteMalformed(noteOffset: noteOffset, nameSize: UInt32.max, descriptorSize: 4, bytesLeft: 20)) {
            try KernelLoader.load(image: image, into: memory(), highMemoryStart: high)
        }
        let error = BootError.elfNoteMalformed(noteOffset: noteOffset, nameSize: UInt32.max, descriptorSize: 4, bytesLeft: 20)
        #expect(error.description.contains("namesz 0xffffffff"))

        note.put(UInt32(4), 0)
        note.put(UInt32(0xFFFF_FFF0), 4)  // huge descsz
        builder.rawNotes = note
        #expect(throws: BootError.elfNoteMalformed(noteOffset: noteOffset, nameSize: 4, descriptorSize: 0xFFFF_FFF0, bytesLeft: 20)) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
    }

    @Test("refuses a PVH descriptor of the wrong size or above 4 GiB")
    func badPVHDescriptor() throws {
        var builder = kernel(notes: [.init(name: "Xen", type: 18, descriptor: [1, 2])])
        #expect(throws: BootError.pvhEntryBadSize(descriptorSize: 2)) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
        var descriptor = [UInt8](repeating: 0, count: 8)
        descriptor.put(UInt64(0x1_0000_0000), 0)
        builder = kernel(notes: [.init(name: "Xen", type: 18, descriptor: descriptor)])
        #expect(throws: BootError.pvhEntryAbove4GiB(entry: 0x1_0000_0000)) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
        builder = kernel(notes: [ELFBuilder.pvhNote(entry32: 0xF000_0000)])
        #expect(throws: BootError.entryOutsideMemory(entry: GuestAddress(0xF000_0000))) {
            try KernelLoader.load(image: builder.build(), into: memory(), highMemoryStart: high)
        }
    }
}
