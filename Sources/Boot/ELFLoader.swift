import GuestMemory

/// Loads an ELF64 x86-64 executable at its physical addresses and finds its
/// PVH entry note. Every header field is file input and is checked before use;
/// nothing is written to guest memory until every segment has been validated.
enum ELFLoader {
    static let magic: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]

    static let headerSize: UInt64 = 64
    static let programHeaderSize: UInt16 = 56
    static let sectionHeaderSize: UInt16 = 64
    static let classELF64: UInt8 = 2
    static let dataLittleEndian: UInt8 = 1
    static let machineX86_64: UInt16 = 62
    static let typeExecutable: UInt16 = 2
    static let segmentLoad: UInt32 = 1
    static let segmentNote: UInt32 = 4
    static let sectionNote: UInt32 = 7
    /// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit physical entry of a PVH kernel.
    static let xenPhys32EntryNote: UInt32 = 18

    struct Segment {
        let index: Int
        let offset: UInt64
        let physicalAddress: GuestAddress
        let fileSize: UInt64
        let memorySize: UInt64
        /// Where the bss (memory beyond the file bytes) starts, and the segment's end.
        let bssStart: GuestAddress
        let end: GuestAddress
    }

    /// A range of the file holding ELF notes, and the alignment of its entries.
    struct NoteArea {
        let offset: UInt64
        let size: UInt64
        let alignment: UInt64
    }

    static func load(
        image: [UInt8], into memory: GuestMemory, highMemoryStart: GuestAddress
    ) throws(BootError) -> LoadedKernel {
        let header = try parseHeader(image)
        var segments: [Segment] = []
        var noteAreas: [NoteArea] = []
        for index in 0..<Int(header.programHeaderCount) {
            let base = header.programHeaderOffset + UInt64(index) * UInt64(programHeaderSize)
            // In bounds: parseHeader checked the whole table lies inside the file.
            guard let type = image.readLE(UInt32.self, at: base),
                  let offset = image.readLE(UInt64.self, at: base + 8),
                  let paddr = image.readLE(UInt64.self, at: base + 24),
                  let fileSize = image.readLE(UInt64.self, at: base + 32),
                  let memorySize = image.readLE(UInt64.self, at: base + 40),
                  let align = image.readLE(UInt64.self, at: base + 48)
            else {
                throw .elfProgramHeadersOutsideFile(
                    offset: header.programHeaderOffset, count: header.programHeaderCount, fileSize: image.count)
            }
            guard type == segmentLoad || type == segmentNote else { continue }
            guard image.containsRange(offset: offset, length: fileSize) else {
                throw .elfSegmentOutsideFile(index: index, offset: offset, fileSize: fileSize, imageSize: image.count)
            }
            if type == segmentNote {
                noteAreas.append(NoteArea(offset: offset, size: fileSize, alignment: align == 8 ? 8 : 4))
                continue
            }
            guard fileSize <= memorySize else {
                throw .elfSegmentFileSizeExceedsMemorySize(index: index, fileSize: fileSize, memorySize: memorySize)
            }
            guard memorySize > 0 else { continue }
            let address = GuestAddress(paddr)
            guard address >= highMemoryStart else {
                throw .elfSegmentBelowHighMemory(index: index, address: address, highMemoryStart: highMemoryStart)
            }
            guard memory.contains(address, length: memorySize),
                  let end = address.adding(memorySize), let bssStart = address.adding(fileSize)
            else {
                throw .elfSegmentOutsideMemory(index: index, address: address, memorySize: memorySize)
            }
            segments.append(Segment(index: index, offset: offset, physicalAddress: address,
                                    fileSize: fileSize, memorySize: memorySize, bssStart: bssStart, end: end))
        }
        guard !segments.isEmpty else { throw .elfNoLoadableSegment }

        var pvhEntry = try findPVHEntry(in: image, areas: noteAreas)
        if pvhEntry == nil {
            pvhEntry = try findPVHEntry(in: image, areas: sectionNoteAreas(image, header: header))
        }

        for segment in segments {
            // Offsets and sizes were validated above; the end cannot overflow.
            let fileEnd = Int(segment.offset + segment.fileSize)
            let step = "loading ELF segment \(segment.index) at \(segment.physicalAddress)"
            do {
                try memory.write(bytes: image[Int(segment.offset)..<fileEnd], at: segment.physicalAddress)
                try memory.zero(at: segment.bssStart, count: segment.memorySize - segment.fileSize)
            } catch {
                throw error.during(step)
            }
        }

        let loadAddress = segments.map(\.physicalAddress).min() ?? highMemoryStart
        let kernelEnd = segments.map(\.end).max() ?? highMemoryStart
        if let pvhEntry {
            guard memory.contains(pvhEntry) else { throw .entryOutsideMemory(entry: pvhEntry) }
            return LoadedKernel(entry: .pvh(entry32: pvhEntry), loadAddress: loadAddress, kernelEnd: kernelEnd)
        }
        let entry = GuestAddress(header.entry)
        guard memory.contains(entry) else { throw .entryOutsideMemory(entry: entry) }
        return LoadedKernel(entry: .elf64(entry: entry), loadAddress: loadAddress, kernelEnd: kernelEnd)
    }

    struct Header {
        let entry: UInt64
        let programHeaderOffset: UInt64
        let programHeaderCount: UInt16
        let sectionHeaderOffset: UInt64
        let sectionHeaderEntrySize: UInt16
        let sectionHeaderCount: UInt16
    }

    /// Validates the identification and the program header table's bounds.
    static func parseHeader(_ image: [UInt8]) throws(BootError) -> Header {
        guard image.count >= Int(headerSize),
              let type = image.readLE(UInt16.self, at: 16),
              let machine = image.readLE(UInt16.self, at: 18),
              let entry = image.readLE(UInt64.self, at: 24),
              let phoff = image.readLE(UInt64.self, at: 32),
              let shoff = image.readLE(UInt64.self, at: 40),
              let phentsize = image.readLE(UInt16.self, at: 54),
              let phnum = image.readLE(UInt16.self, at: 56),
              let shentsize = image.readLE(UInt16.self, at: 58),
              let shnum = image.readLE(UInt16.self, at: 60)
        else { throw .elfHeaderTruncated(fileSize: image.count) }
        guard image[4] == classELF64 else { throw .elfNotClass64(found: image[4]) }
        guard image[5] == dataLittleEndian else { throw .elfNotLittleEndian(found: image[5]) }
        guard machine == machineX86_64 else { throw .elfWrongMachine(found: machine) }
        guard type == typeExecutable else { throw .elfWrongType(found: type) }
        guard phentsize == programHeaderSize else { throw .elfBadProgramHeaderSize(found: phentsize) }
        // phnum * 56 cannot overflow a UInt64 (phnum < 2^16).
        guard image.containsRange(offset: phoff, length: UInt64(phnum) * UInt64(programHeaderSize)) else {
            throw .elfProgramHeadersOutsideFile(offset: phoff, count: phnum, fileSize: image.count)
        }
        return Header(entry: entry, programHeaderOffset: phoff, programHeaderCount: phnum,
                      sectionHeaderOffset: shoff, sectionHeaderEntrySize: shentsize, sectionHeaderCount: shnum)
    }

    /// SHT_NOTE sections, searched when no PT_NOTE segment holds the PVH note.
    static func sectionNoteAreas(_ image: [UInt8], header: Header) throws(BootError) -> [NoteArea] {
        guard header.sectionHeaderOffset != 0, header.sectionHeaderCount != 0 else { return [] }
        let tableSize = UInt64(header.sectionHeaderCount) * UInt64(sectionHeaderSize)
        guard header.sectionHeaderEntrySize == sectionHeaderSize,
              image.containsRange(offset: header.sectionHeaderOffset, length: tableSize)
        else {
            throw .elfSectionHeadersOutsideFile(
                offset: header.sectionHeaderOffset, count: header.sectionHeaderCount,
                entrySize: header.sectionHeaderEntrySize, fileSize: image.count)
        }
        var areas: [NoteArea] = []
        for index in 0..<UInt64(header.sectionHeaderCount) {
            let base = header.sectionHeaderOffset + index * UInt64(sectionHeaderSize)
            guard let type = image.readLE(UInt32.self, at: base + 4),
                  let offset = image.readLE(UInt64.self, at: base + 24),
                  let size = image.readLE(UInt64.self, at: base + 32),
                  let align = image.readLE(UInt64.self, at: base + 48),
                  type == sectionNote
            else { continue }
            guard image.containsRange(offset: offset, length: size) else {
                throw .elfSegmentOutsideFile(index: Int(index), offset: offset, fileSize: size, imageSize: image.count)
            }
            areas.append(NoteArea(offset: offset, size: size, alignment: align == 8 ? 8 : 4))
        }
        return areas
    }

    /// The address in the first "Xen" XEN_ELFNOTE_PHYS32_ENTRY note, if any.
    static func findPVHEntry(in image: [UInt8], areas: [NoteArea]) throws(BootError) -> GuestAddress? {
        for area in areas {
            for note in try notes(in: image, area: area) where note.type == xenPhys32EntryNote && note.name == "Xen" {
                let entry: UInt64
                switch note.descriptor.count {
                case 4: entry = UInt64(note.descriptor.readLE(UInt32.self, at: 0) ?? 0)
                case 8: entry = note.descriptor.readLE(UInt64.self, at: 0) ?? 0
                default: throw .pvhEntryBadSize(descriptorSize: UInt32(note.descriptor.count))
                }
                guard entry < 1 << 32 else { throw .pvhEntryAbove4GiB(entry: entry) }
                return GuestAddress(entry)
            }
        }
        return nil
    }

    struct Note {
        let name: String
        let type: UInt32
        let descriptor: [UInt8]
    }

    /// Splits a note area into notes. Sizes are 32-bit file values, summed in
    /// 64 bits so nothing overflows, and each must stay inside the area.
    static func notes(in image: [UInt8], area: NoteArea) throws(BootError) -> [Note] {
        var result: [Note] = []
        var position: UInt64 = 0
        while position < area.size {
            let left = area.size - position
            // Fewer bytes than a note header: padding at the end of the area.
            guard left >= 12 else { break }
            let at = area.offset + position
            guard let nameSize = image.readLE(UInt32.self, at: at),
                  let descriptorSize = image.readLE(UInt32.self, at: at + 4),
                  let type = image.readLE(UInt32.self, at: at + 8)
            else { break }
            let paddedName = alignUp(UInt64(nameSize), area.alignment)
            let paddedDescriptor = alignUp(UInt64(descriptorSize), area.alignment)
            // The descriptor's padding may be cut off at the very end of the area.
            guard 12 + paddedName + UInt64(descriptorSize) <= left else {
                throw .elfNoteMalformed(noteOffset: at, nameSize: nameSize, descriptorSize: descriptorSize, bytesLeft: left)
            }
            let nameStart = Int(at + 12)
            var nameBytes = Array(image[nameStart..<nameStart + Int(nameSize)])
            if nameBytes.last == 0 { nameBytes.removeLast() }
            let descriptorStart = nameStart + Int(paddedName)
            let descriptor = Array(image[descriptorStart..<descriptorStart + Int(descriptorSize)])
            result.append(Note(name: String(decoding: nameBytes, as: UTF8.self), type: type, descriptor: descriptor))
            position += 12 + paddedName + paddedDescriptor
        }
        return result
    }

    static func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64 {
        (value + alignment - 1) & ~(alignment - 1)
    }
}
