import Foundation
import GuestMemory
import Testing

@testable import Boot

// MARK: Byte helpers

extension Array where Element == UInt8 {
    /// Little-endian read for assertions; nil past the end.
    func le<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type, _ offset: Int) -> T? {
        readLE(T.self, at: UInt64(offset))
    }

    mutating func put<T: FixedWidthInteger & UnsignedInteger>(_ value: T, _ offset: Int) {
        storeLE(value, at: offset)
    }
}

func makeMemory(_ ranges: [(start: GuestAddress, size: UInt64)]) throws -> GuestMemory {
    try GuestMemory(ranges: ranges)
}

let MiB: UInt64 = 1 << 20
let GiB: UInt64 = 1 << 30

// MARK: ELF builder

/// Builds small ELF64 executables: header, program headers, segment data,
/// then notes (in a PT_NOTE segment or an SHT_NOTE section).
struct ELFBuilder {
    struct Segment {
        var physicalAddress: UInt64
        var data: [UInt8]
        var memorySize: UInt64
    }

    struct Note {
        var name: String
        var type: UInt32
        var descriptor: [UInt8]
    }

    var elfClass: UInt8 = 2
    var dataEncoding: UInt8 = 1
    var type: UInt16 = 2
    var machine: UInt16 = 62
    var entry: UInt64 = 0x100000
    var segments: [Segment] = []
    var notes: [Note] = []
    /// Replaces the encoded notes, to build malformed ones.
    var rawNotes: [UInt8]?
    /// Put the notes in an SHT_NOTE section instead of a PT_NOTE segment.
    var notesInSection = false

    static func pvhNote(entry32: UInt32) -> Note {
        var descriptor = [UInt8](repeating: 0, count: 4)
        descriptor.put(entry32, 0)
        return Note(name: "Xen", type: 18, descriptor: descriptor)
    }

    static func encode(_ notes: [Note]) -> [UInt8] {
        var bytes: [UInt8] = []
        for note in notes {
            let name = Array(note.name.utf8) + [0]
            var header = [UInt8](repeating: 0, count: 12)
            header.put(UInt32(name.count), 0)
            header.put(UInt32(note.descriptor.count), 4)
            header.put(note.type, 8)
            bytes += header + name + [UInt8](repeating: 0, count: (4 - name.count % 4) % 4)
            bytes += note.descriptor + [UInt8](repeating: 0, count: (4 - note.descriptor.count % 4) % 4)
        }
        return bytes
    }

    func build() -> [UInt8] {
        let noteBytes = rawNotes ?? Self.encode(notes)
        let hasNoteSegment = !noteBytes.isEmpty && !notesInSection
        let phnum = segments.count + (hasNoteSegment ? 1 : 0)
        var image = [UInt8](repeating: 0, count: 64 + 56 * phnum)
        image.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        image[4] = elfClass
        image[5] = dataEncoding
        image[6] = 1
        image.put(type, 16)
        image.put(machine, 18)
        image.put(UInt32(1), 20)
        image.put(entry, 24)
        image.put(UInt64(64), 32)
        image.put(UInt16(64), 52)
        image.put(UInt16(56), 54)
        image.put(UInt16(phnum), 56)
        image.put(UInt16(64), 58)

        var phdrs: [(type: UInt32, offset: Int, paddr: UInt64, filesz: Int, memsz: UInt64, align: UInt64)] = []
        for segment in segments {
            phdrs.append((1, image.count, segment.physicalAddress, segment.data.count, segment.memorySize, 0x1000))
            image += segment.data
        }
        let noteOffset = image.count
        image += noteBytes
        if hasNoteSegment {
            phdrs.append((4, noteOffset, 0, noteBytes.count, 0, 4))
        }
        for (index, phdr) in phdrs.enumerated() {
            let base = 64 + index * 56
            image.put(phdr.type, base)
            image.put(UInt32(5), base + 4)
            image.put(UInt64(phdr.offset), base + 8)
            image.put(phdr.paddr, base + 16)
            image.put(phdr.paddr, base + 24)
            image.put(UInt64(phdr.filesz), base + 32)
            image.put(phdr.memsz, base + 40)
            image.put(phdr.align, base + 48)
        }
        if notesInSection {
            // Section 0 is the null section; section 1 is the notes.
            let shoff = image.count
            image += [UInt8](repeating: 0, count: 128)
            image.put(UInt32(7), shoff + 64 + 4)
            image.put(UInt64(noteOffset), shoff + 64 + 24)
            image.put(UInt64(noteBytes.count), shoff + 64 + 32)
            image.put(UInt64(4), shoff + 64 + 48)
            image.put(UInt64(shoff), 40)
            image.put(UInt16(2), 60)
        }
        return image
    }
}

// MARK: Synthetic bzImage

/// A minimal bzImage: boot sector + setup sectors with a protocol 2.15 header,
/// then a recognisable protected-mode payload.
struct BzImageBuilder {
    var setupSectors: UInt8 = 4
    var version: UInt16 = 0x020F
    var loadflags: UInt8 = 0x01
    var xloadflags: UInt16 = 0x03
    var relocatable = true
    var kernelAlignment: UInt32 = 0x20_0000
    var preferredAddress: UInt64 = 0x100_0000
    var initSize: UInt32 = 0x10_0000
    var commandLineSize: UInt32 = 0x7FF
    var initrdAddressMax: UInt32 = 0x7FFF_FFFF
    var payloadSize = 0x4000
    var headerEndByte: UInt8 = 0x6A

    func build() -> [UInt8] {
        let sectors = setupSectors == 0 ? 4 : Int(setupSectors)
        var image = [UInt8](repeating: 0, count: (sectors + 1) * 512)
        image[0] = 0x4D
        image[1] = 0x5A
        image[0x1F1] = setupSectors
        image.put(UInt32(payloadSize / 16), 0x1F4)
        image.put(UInt16(0xAA55), 0x1FE)
        image[0x200] = 0xEB
        image[0x201] = headerEndByte
        image.put(UInt32(0x5372_6448), 0x202)
        image.put(version, 0x206)
        image[0x211] = loadflags
        image.put(initrdAddressMax, 0x22C)
        image.put(kernelAlignment, 0x230)
        image[0x234] = relocatable ? 1 : 0
        image[0x235] = 0x15
        image.put(xloadflags, 0x236)
        image.put(commandLineSize, 0x238)
        image.put(preferredAddress, 0x258)
        image.put(initSize, 0x260)
        image += (0..<payloadSize).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        return image
    }
}

func syntheticSetupHeader() throws -> SetupHeader {
    try SetupHeader.parse(BzImageBuilder().build())
}

// MARK: The real Debian kernel

/// `.cache/test-kernels/vmlinuz` at the package root, fetched by
/// `scripts/fetch-test-kernel`. Absent: the suite is skipped, except under
/// CI=true, where its tests run and fail on the missing file.
enum TestKernel {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let path = packageRoot.appendingPathComponent(".cache/test-kernels/vmlinuz").path
    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"
    static let image: [UInt8]? = FileManager.default.contents(atPath: path).map { Array($0) }
    static let shouldRun = image != nil || isCI
    static let missingReason: Comment =
        "no test kernel at .cache/test-kernels/vmlinuz: run scripts/fetch-test-kernel (required when CI=true)"

    static func load() throws -> [UInt8] {
        try #require(image, "\(missingReason)")
    }
}
