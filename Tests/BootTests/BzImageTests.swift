import GuestMemory
import Testing

@testable import Boot

@Suite("bzImage loading (synthetic images)")
struct SyntheticBzImageTests {
    let high = GuestAddress(0x100000)

    @Test("parses the setup header fields the loader and the zero page need")
    func parse() throws {
        var builder = BzImageBuilder()
        builder.setupSectors = 0  // 0 means 4
        let header = try SetupHeader.parse(builder.build())
        #expect(header.setupSectors == 4)
        #expect(header.setupSize == 5 * 512)
        #expect(header.version == 0x020F)
        #expect(header.relocatable)
        #expect(header.kernelAlignment == 0x20_0000)
        #expect(header.preferredAddress == 0x100_0000)
        #expect(header.initSize == 0x10_0000)
        #expect(header.commandLineSize == 0x7FF)
        #expect(header.initrdAddressMax == 0x7FFF_FFFF)
        #expect(header.xloadflags == 0x03)
        #expect(header.endOffset == 0x26C)
        #expect(header.rawBytes.count == 0x26C - 0x1F1)
        #expect(header.rawBytes[0x202 - 0x1F1] == 0x48)  // 'H' of HdrS
    }

    @Test("loads the payload at pref_address with the 64-bit entry 0x200 past it")
    func loadAtPreferredAddress() throws {
        let image = BzImageBuilder().build()
        let memory = try makeMemory([(GuestAddress(0), 64 * MiB)])
        let loaded = try KernelLoader.load(image: image, into: memory, highMemoryStart: high)
        let header = try SetupHeader.parse(image)
        #expect(loaded.entry == .linux64(entry: GuestAddress(0x100_0200), setupHeader: header))
        #expect(loaded.setupHeader == header)
        #expect(loaded.loadAddress == GuestAddress(0x100_0000))
        #expect(loaded.kernelEnd == GuestAddress(0x110_0000))  // init_size beyond the payload
        #expect(try memory.readBytes(at: GuestAddress(0x100_0000), count: 0x4000) == Array(image[(5 * 512)...]))
    }

    @Test("a relocatable kernel too big for pref_address goes at the aligned high-memory start")
    func relocatesWhenPreferredDoesNotFit() throws {
        var builder = BzImageBuilder()
        builder.initSize = 0x180_0000  // 24 MiB: 16 + 24 > 32 MiB of RAM
        let memory = try makeMemory([(GuestAddress(0), 32 * MiB)])
        let loaded = try KernelLoader.load(image: builder.build(), into: memory, highMemoryStart: high)
        #expect(loaded.loadAddress == GuestAddress(0x20_0000))  // 1 MiB aligned up to 2 MiB
        #expect(loaded.kernelEnd == GuestAddress(0x20_0000 + 0x180_0000))

        let small = try makeMemory([(GuestAddress(0), 16 * MiB)])
        #expect(throws: BootError.bzImageDoesNotFit(footprint: 0x180_0000, tried: [GuestAddress(0x100_0000), GuestAddress(0x20_0000)])) {
            try KernelLoader.load(image: builder.build(), into: small, highMemoryStart: high)
        }
    }

    @Test("a non-relocatable kernel is loaded only at pref_address")
    func nonRelocatable() throws {
        var builder = BzImageBuilder()
        builder.relocatable = false
        builder.kernelAlignment = 0  // not checked for a kernel that does not relocate
        builder.initSize = 0x180_0000
        let memory = try makeMemory([(GuestAddress(0), 32 * MiB)])
        #expect(throws: BootError.bzImageDoesNotFit(footprint: 0x180_0000, tried: [GuestAddress(0x100_0000)])) {
            try KernelLoader.load(image: builder.build(), into: memory, highMemoryStart: high)
        }
    }

    @Test("refuses header fields a 64-bit loader cannot honour")
    func badFields() throws {
        var builder = BzImageBuilder()
        builder.loadflags = 0
        #expect(throws: BootError.bzImageNotLoadedHigh(loadflags: 0)) { try SetupHeader.parse(builder.build()) }
        builder = BzImageBuilder()
        builder.kernelAlignment = 0x30_0000
        #expect(throws: BootError.bzImageBadKernelAlignment(found: 0x30_0000)) { try SetupHeader.parse(builder.build()) }
        builder = BzImageBuilder()
        builder.headerEndByte = 0xF0
        #expect(throws: BootError.bzImageBadSetupHeaderLength(end: 0x2F2)) { try SetupHeader.parse(builder.build()) }
        builder = BzImageBuilder()
        builder.version = 0x020B
        #expect(throws: BootError.bzImageProtocolTooOld(found: 0x020B, required: 0x020C)) { try SetupHeader.parse(builder.build()) }
        #expect(BootError.bzImageProtocolTooOld(found: 0x020B, required: 0x020C).description
            == "checking the boot protocol version: the kernel has 2.11, 2.12 or later is needed")
    }
}

/// The real Debian cloud kernel from scripts/fetch-test-kernel.
@Suite("bzImage loading (Debian kernel)", .enabled(if: TestKernel.shouldRun, TestKernel.missingReason))
struct RealBzImageTests {
    let high = GuestAddress(0x100000)

    @Test("parses the real setup header")
    func header() throws {
        let image = try TestKernel.load()
        let header = try SetupHeader.parse(image)
        #expect(header.version >= 0x020C)
        #expect(header.xloadflags & SetupHeader.xlfKernel64 != 0)
        #expect(header.relocatable)
        #expect(header.kernelAlignment.nonzeroBitCount == 1)
        #expect(header.commandLineSize >= 255)
        // Decompressing needs more than the compressed payload, but not absurdly more.
        let payload = UInt64(image.count - header.setupSize)
        #expect(UInt64(header.initSize) > payload)
        #expect(UInt64(header.initSize) < 512 * MiB)
        #expect(header.preferredAddress >= 0x100000)
    }

    @Test("loads into 256 MiB and builds a zero page for it")
    func loadAndZeroPage() throws {
        let image = try TestKernel.load()
        let memory = try makeMemory([(GuestAddress(0), 256 * MiB)])
        let loaded = try KernelLoader.load(image: image, into: memory, highMemoryStart: high)
        let header = try #require(loaded.setupHeader)
        let loadAddress = GuestAddress(header.preferredAddress)
        #expect(loaded.entry == .linux64(entry: loadAddress + 0x200, setupHeader: header))
        #expect(loaded.loadAddress == loadAddress)
        #expect(loaded.kernelEnd.rawValue == loadAddress.rawValue + max(UInt64(header.initSize), UInt64(image.count - header.setupSize)))
        // The payload's first and last bytes are where they belong.
        #expect(try memory.readBytes(at: loadAddress, count: 4096) == Array(image[header.setupSize..<header.setupSize + 4096]))
        let tailLength = 4096
        let tailAddress = loadAddress + UInt64(image.count - header.setupSize - tailLength)
        #expect(try memory.readBytes(at: tailAddress, count: tailLength) == Array(image.suffix(tailLength)))

        var commandLine = KernelCommandLine(for: header, capacity: 0x10000)
        try commandLine.append("console=ttyS0 reboot=k panic=1")
        try commandLine.write(into: memory, at: GuestAddress(0x20000))
        let e820 = try E820Map.standard(memory: memory, ebdaStart: GuestAddress(0x9FC00),
                                        highMemoryStart: high, mmioHoleStart: GuestAddress(0xC000_0000))
        let initrd = try InitrdPlacement.load([UInt8](repeating: 0x5A, count: 0x12345), into: memory,
                                              kernelEnd: loaded.kernelEnd,
                                              maxAddress: GuestAddress(UInt64(header.initrdAddressMax)))
        let params = BootParams(setupHeader: header, commandLineAddress: GuestAddress(0x20000), initrd: initrd,
                                acpiRSDPAddress: GuestAddress(0xE0000), e820: e820.entries)
        try params.write(into: memory, at: GuestAddress(0x7000))
        let page = try memory.readBytes(at: GuestAddress(0x7000), count: 4096)
        #expect(page.le(UInt32.self, 0x202) == SetupHeader.magic)
        #expect(page.le(UInt16.self, 0x206) == header.version)
        #expect(page.le(UInt32.self, 0x228) == 0x20000)
        #expect(page.le(UInt32.self, 0x218) == UInt32(initrd.address.rawValue))
        #expect(page.le(UInt32.self, 0x21C) == 0x12345)
        #expect(page[0x1E8] == 3)
        #expect(initrd.address.rawValue + initrd.size <= 256 * MiB)
        #expect(initrd.address >= loaded.kernelEnd)
    }

    @Test("truncated copies give the error for the part that was cut")
    func truncated() throws {
        let image = try TestKernel.load()
        let header = try SetupHeader.parse(image)
        #expect(throws: BootError.bzImageTruncated(part: .setupHeader, fileSize: 0x100, needed: 0x208)) {
            try SetupHeader.parse(Array(image.prefix(0x100)))
        }
        // Starts with "MZ", so detection still routes a cut copy to the bzImage parser.
        let memory = try makeMemory([(GuestAddress(0), 256 * MiB)])
        #expect(throws: BootError.bzImageTruncated(part: .setupHeader, fileSize: 0x100, needed: 0x208)) {
            try KernelLoader.load(image: Array(image.prefix(0x100)), into: memory, highMemoryStart: high)
        }
        #expect(throws: BootError.bzImageTruncated(part: .setupHeader, fileSize: 0x240, needed: UInt64(header.endOffset))) {
            try SetupHeader.parse(Array(image.prefix(0x240)))
        }
        let insideSetup = header.setupSize - 512
        #expect(throws: BootError.bzImageTruncated(part: .setupSectors, fileSize: insideSetup, needed: UInt64(header.setupSize))) {
            try SetupHeader.parse(Array(image.prefix(insideSetup)))
        }
        let insideKernel = header.setupSize + 0x10000
        let kernelEnd = UInt64(header.setupSize) + UInt64(header.syssize) * 16
        #expect(throws: BootError.bzImageTruncated(part: .protectedModeKernel, fileSize: insideKernel, needed: kernelEnd)) {
            try SetupHeader.parse(Array(image.prefix(insideKernel)))
        }
    }

    @Test("corrupted copies give the specific header error")
    func corrupted() throws {
        let image = try TestKernel.load()
        var copy = image
        copy[0x203] = UInt8(ascii: "X")  // "HXrS"
        #expect(throws: BootError.bzImageBadHeaderMagic(found: 0x5372_5848)) { try SetupHeader.parse(copy) }

        copy = image
        copy.put(UInt16(0x55AA), 0x1FE)
        #expect(throws: BootError.bzImageBadBootFlag(found: 0x55AA)) { try SetupHeader.parse(copy) }

        copy = image
        copy.put(UInt16(0x0200), 0x206)
        #expect(throws: BootError.bzImageProtocolTooOld(found: 0x0200, required: 0x020C)) { try SetupHeader.parse(copy) }

        copy = image
        let xloadflags = try #require(image.le(UInt16.self, 0x236))
        copy.put(xloadflags & ~SetupHeader.xlfKernel64, 0x236)
        #expect(throws: BootError.bzImageNo64BitEntry(xloadflags: xloadflags & ~1)) { try SetupHeader.parse(copy) }
    }

    @Test("a kernel whose init_size does not fit in RAM is refused")
    func tooLittleRAM() throws {
        let image = try TestKernel.load()
        let header = try SetupHeader.parse(image)
        let memory = try makeMemory([(GuestAddress(0), 16 * MiB)])
        let expected = BootError.bzImageDoesNotFit(
            footprint: UInt64(header.initSize), tried: [GuestAddress(header.preferredAddress), GuestAddress(0x200000)])
        #expect(throws: expected) {
            try KernelLoader.load(image: image, into: memory, highMemoryStart: high)
        }
    }
}
