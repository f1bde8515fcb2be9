import GuestMemory
import Testing

@testable import Boot

@Suite("Zero page")
struct BootParamsTests {
    @Test("places each loader field at its boot_params offset")
    func offsets() throws {
        let header = try syntheticSetupHeader()
        let e820 = [
            E820Entry(address: 0, size: 0x9FC00, type: .ram),
            E820Entry(address: 0x9FC00, size: 0x60400, type: .reserved),
            E820Entry(address: 0x100000, size: 0x7F00000, type: .ram),
        ]
        let params = BootParams(setupHeader: header, commandLineAddress: GuestAddress(0x20000),
                                initrd: InitrdLocation(address: GuestAddress(0x7E00000), size: 0x123456),
                                acpiRSDPAddress: GuestAddress(0xE0000), e820: e820)
        let page = try params.bytes()
        #expect(page.count == 4096)
        #expect(page.le(UInt64.self, 0x070) == 0xE0000)  // acpi_rsdp_addr
        #expect(page[0x1E8] == 3)  // e820_entries
        #expect(page.le(UInt16.self, 0x1FA) == 0xFFFF)  // vid_mode
        #expect(page.le(UInt32.self, 0x202) == 0x5372_6448)  // header copied
        #expect(page.le(UInt16.self, 0x206) == 0x020F)
        #expect(page[0x210] == 0xFF)  // type_of_loader
        #expect(page[0x211] == 0x81)  // LOADED_HIGH | CAN_USE_HEAP
        #expect(page.le(UInt32.self, 0x218) == 0x7E00000)  // ramdisk_image
        #expect(page.le(UInt32.self, 0x21C) == 0x123456)  // ramdisk_size
        #expect(page.le(UInt16.self, 0x224) == 0xFE00)  // heap_end_ptr
        #expect(page.le(UInt32.self, 0x228) == 0x20000)  // cmd_line_ptr
        #expect(page.le(UInt32.self, 0x238) == 0x7FF)  // cmdline_size kept from the kernel
        #expect(page.le(UInt32.self, 0x0C0) == 0)  // no ext_ parts below 4 GiB
        #expect(page.le(UInt32.self, 0x0C8) == 0)
        for (index, entry) in e820.enumerated() {
            let base = 0x2D0 + 20 * index
            #expect(page.le(UInt64.self, base) == entry.address)
            #expect(page.le(UInt64.self, base + 8) == entry.size)
            #expect(page.le(UInt32.self, base + 16) == entry.type.rawValue)
        }
        #expect(page[(0x2D0 + 60)..<(0x2D0 + 80)].allSatisfy { $0 == 0 })
        // Nothing outside the header and the fields above is written.
        #expect(page[0x290..<0x2D0].allSatisfy { $0 == 0 })
        #expect(page[0xCD0...].allSatisfy { $0 == 0 })
    }

    @Test("splits addresses above 4 GiB into the ext_ fields")
    func above4GiB() throws {
        let params = BootParams(setupHeader: try syntheticSetupHeader(),
                                commandLineAddress: GuestAddress(0x1_2000_0000),
                                initrd: InitrdLocation(address: GuestAddress(0x2_0000_1000), size: 0x1_0000_0002))
        let page = try params.bytes()
        #expect(page.le(UInt32.self, 0x228) == 0x2000_0000)
        #expect(page.le(UInt32.self, 0x0C8) == 0x1)
        #expect(page.le(UInt32.self, 0x218) == 0x1000)
        #expect(page.le(UInt32.self, 0x0C0) == 0x2)
        #expect(page.le(UInt32.self, 0x21C) == 0x2)
        #expect(page.le(UInt32.self, 0x0C4) == 0x1)
        #expect(page.le(UInt64.self, 0x070) == 0)
    }

    @Test("refuses more than 128 e820 entries")
    func tooManyEntries() throws {
        let entries = (0..<129).map { E820Entry(address: UInt64($0) << 20, size: 1 << 20, type: .ram) }
        let params = BootParams(setupHeader: try syntheticSetupHeader(), e820: entries)
        #expect(throws: BootError.tooManyMemoryMapEntries(count: 129, maximum: 128)) { try params.bytes() }
        var ok = params
        ok.e820.removeLast()
        #expect(try ok.bytes()[0x1E8] == 128)
    }

    @Test("writes the page into guest memory, bounds-checked")
    func write() throws {
        let memory = try makeMemory([(GuestAddress(0), 0x10000)])
        let params = BootParams(setupHeader: try syntheticSetupHeader())
        try params.write(into: memory, at: GuestAddress(0x7000))
        #expect(try memory.read(UInt32.self, at: GuestAddress(0x7202)) == 0x5372_6448)
        #expect(throws: BootError.guestMemory(step: "writing the zero page at 0xf800",
                                              .outOfBounds(address: GuestAddress(0xF800), length: 4096))) {
            try params.write(into: memory, at: GuestAddress(0xF800))
        }
    }
}

@Suite("PVH start info")
struct PVHStartInfoTests {
    let memoryMap = [
        E820Entry(address: 0, size: 0x9FC00, type: .ram),
        E820Entry(address: 0x9FC00, size: 0x60400, type: .reserved),
        E820Entry(address: 0x100000, size: 0x7F00000, type: .ram),
    ]

    @Test("matches the C layout of hvm_start_info, hvm_modlist_entry and hvm_memmap_table_entry")
    func layout() throws {
        let info = PVHStartInfo(flags: 0, commandLineAddress: GuestAddress(0x20000), rsdpAddress: GuestAddress(0xE0000),
                                modules: [PVHModule(initrd: InitrdLocation(address: GuestAddress(0x7000000), size: 0x4321))],
                                memoryMap: memoryMap)
        let bytes = info.startInfoBytes(moduleListAddress: GuestAddress(0x6040), memoryMapAddress: GuestAddress(0x6100))
        #expect(PVHStartInfo.size == 56)
        #expect(bytes.count == 56)
        #expect(bytes.le(UInt32.self, 0) == 0x336E_C578)  // magic
        #expect(bytes.le(UInt32.self, 4) == 1)  // version
        #expect(bytes.le(UInt32.self, 8) == 0)  // flags
        #expect(bytes.le(UInt32.self, 12) == 1)  // nr_modules
        #expect(bytes.le(UInt64.self, 16) == 0x6040)  // modlist_paddr
        #expect(bytes.le(UInt64.self, 24) == 0x20000)  // cmdline_paddr
        #expect(bytes.le(UInt64.self, 32) == 0xE0000)  // rsdp_paddr
        #expect(bytes.le(UInt64.self, 40) == 0x6100)  // memmap_paddr
        #expect(bytes.le(UInt32.self, 48) == 3)  // memmap_entries
        #expect(bytes.le(UInt32.self, 52) == 0)  // reserved

        let modules = info.moduleListBytes()
        #expect(modules.count == 32)
        #expect(modules.le(UInt64.self, 0) == 0x7000000)
        #expect(modules.le(UInt64.self, 8) == 0x4321)
        #expect(modules.le(UInt64.self, 16) == 0)
        #expect(modules.le(UInt64.self, 24) == 0)

        let map = info.memoryMapBytes()
        #expect(map.count == 3 * 24)
        #expect(map.le(UInt64.self, 24) == 0x9FC00)
        #expect(map.le(UInt64.self, 32) == 0x60400)
        #expect(map.le(UInt32.self, 40) == 2)
        #expect(map.le(UInt32.self, 44) == 0)
        #expect(map.le(UInt64.self, 48) == 0x100000)
        #expect(map.le(UInt32.self, 64) == 1)
    }

    @Test("an empty module list or memory map is announced with a null pointer")
    func emptyTables() {
        let bytes = PVHStartInfo().startInfoBytes(moduleListAddress: GuestAddress(0x6040), memoryMapAddress: GuestAddress(0x6100))
        #expect(bytes.le(UInt32.self, 12) == 0)
        #expect(bytes.le(UInt64.self, 16) == 0)
        #expect(bytes.le(UInt64.self, 40) == 0)
        #expect(bytes.le(UInt32.self, 48) == 0)
    }

    @Test("writes the three tables into guest memory")
    func write() throws {
        let memory = try makeMemory([(GuestAddress(0), 0x10000)])
        let info = PVHStartInfo(commandLineAddress: GuestAddress(0x20000),
                                modules: [PVHModule(address: GuestAddress(0x7000000), size: 0x10)], memoryMap: memoryMap)
        try info.write(into: memory, at: GuestAddress(0x6000), moduleListAt: GuestAddress(0x6040),
                       memoryMapAt: GuestAddress(0x6100), memoryMapMaxEntries: 128)
        #expect(try memory.read(UInt32.self, at: GuestAddress(0x6000)) == 0x336E_C578)
        #expect(try memory.read(UInt64.self, at: GuestAddress(0x6040)) == 0x7000000)
        #expect(try memory.read(UInt64.self, at: GuestAddress(0x6100 + 48)) == 0x100000)
    }

    @Test("refuses overlapping tables and too long a memory map")
    func refusals() throws {
        let memory = try makeMemory([(GuestAddress(0), 0x10000)])
        let info = PVHStartInfo(modules: [PVHModule(address: GuestAddress(0x7000000), size: 0x10)], memoryMap: memoryMap)
        #expect(throws: BootError.pvhTablesOverlap(first: "start info", firstStart: GuestAddress(0x6000), firstSize: 56,
                                                   second: "module list", secondStart: GuestAddress(0x6020), secondSize: 32)) {
            try info.write(into: memory, at: GuestAddress(0x6000), moduleListAt: GuestAddress(0x6020),
                           memoryMapAt: GuestAddress(0x6100), memoryMapMaxEntries: 128)
        }
        #expect(throws: BootError.tooManyMemoryMapEntries(count: 3, maximum: 2)) {
            try info.write(into: memory, at: GuestAddress(0x6000), moduleListAt: GuestAddress(0x6040),
                           memoryMapAt: GuestAddress(0x6100), memoryMapMaxEntries: 2)
        }
    }
}

@Suite("E820 map")
struct E820Tests {
    let ebda = GuestAddress(0x9FC00)
    let high = GuestAddress(0x100000)
    let hole = GuestAddress(0xC000_0000)

    @Test("128 MiB: low RAM, the reserved EBDA/BIOS area, RAM from 1 MiB")
    func small() throws {
        let map = try E820Map.standard(ramRanges: [(GuestAddress(0), 128 * MiB)], ebdaStart: ebda,
                                       highMemoryStart: high, mmioHoleStart: hole)
        #expect(map.entries == [
            E820Entry(address: 0, size: 0x9FC00, type: .ram),
            E820Entry(address: 0x9FC00, size: 0x100000 - 0x9FC00, type: .reserved),
            E820Entry(address: 0x100000, size: 128 * MiB - 0x100000, type: .ram),
        ])
    }

    @Test("exactly 3 GiB ends RAM at the MMIO hole")
    func threeGiB() throws {
        let map = try E820Map.standard(ramRanges: [(GuestAddress(0), 3 * GiB)], ebdaStart: ebda,
                                       highMemoryStart: high, mmioHoleStart: hole)
        #expect(map.entries.count == 3)
        #expect(map.entries.last == E820Entry(address: 0x100000, size: 0xC000_0000 - 0x100000, type: .ram))
    }

    @Test("5 GiB is split around the hole, the rest from 4 GiB")
    func fiveGiB() throws {
        let map = try E820Map.standard(ramRanges: [(GuestAddress(4 * GiB), 2 * GiB), (GuestAddress(0), 3 * GiB)],
                                       ebdaStart: ebda, highMemoryStart: high, mmioHoleStart: hole)
        #expect(map.entries == [
            E820Entry(address: 0, size: 0x9FC00, type: .ram),
            E820Entry(address: 0x9FC00, size: 0x60400, type: .reserved),
            E820Entry(address: 0x100000, size: 0xC000_0000 - 0x100000, type: .ram),
            E820Entry(address: 0x1_0000_0000, size: 2 * GiB, type: .ram),
        ])
        #expect(map.entries.filter { $0.type == .ram }.reduce(0) { $0 + $1.size } == 5 * GiB - 0x60400)
    }

    @Test("refuses RAM in the hole, overlapping or empty ranges")
    func refusals() {
        #expect(throws: BootError.e820RangeInHole(start: GuestAddress(0), size: 5 * GiB, holeStart: hole,
                                                  holeEnd: GuestAddress(4 * GiB))) {
            try E820Map.standard(ramRanges: [(GuestAddress(0), 5 * GiB)], ebdaStart: ebda,
                                 highMemoryStart: high, mmioHoleStart: hole)
        }
        #expect(throws: BootError.e820BadRange(start: GuestAddress(0x1000), size: 0x2000)) {
            try E820Map.standard(ramRanges: [(GuestAddress(0), 0x2000), (GuestAddress(0x1000), 0x2000)],
                                 ebdaStart: ebda, highMemoryStart: high, mmioHoleStart: hole)
        }
        #expect(throws: BootError.e820BadRange(start: GuestAddress(0), size: 0)) {
            try E820Map.standard(ramRanges: [(GuestAddress(0), 0)], ebdaStart: ebda,
                                 highMemoryStart: high, mmioHoleStart: hole)
        }
    }
}

@Suite("Initrd placement")
struct InitrdPlacementTests {
    @Test("goes at the highest page-aligned address below the limit")
    func highest() throws {
        let ram: [(start: GuestAddress, size: UInt64)] = [(GuestAddress(0), 128 * MiB)]
        #expect(try InitrdPlacement.place(size: 0x1234, ramRanges: ram, kernelEnd: GuestAddress(0x200_0000),
                                          maxAddress: GuestAddress(0xFFFF_FFFF)) == GuestAddress(0x7FFE000))
        // initrd_addr_max is the last byte allowed: the end may touch it exactly.
        #expect(try InitrdPlacement.place(size: 0x2000, ramRanges: ram, kernelEnd: GuestAddress(0x200_0000),
                                          maxAddress: GuestAddress(0x4FF_FFFF)) == GuestAddress(0x4FF_E000))
        // Above 4 GiB RAM is ignored when the limit is below it.
        let big: [(start: GuestAddress, size: UInt64)] = [(GuestAddress(0), 3 * GiB), (GuestAddress(4 * GiB), 2 * GiB)]
        #expect(try InitrdPlacement.place(size: 0x1000, ramRanges: big, kernelEnd: GuestAddress(0x400_0000),
                                          maxAddress: GuestAddress(0xFFFF_FFFF)) == GuestAddress(3 * GiB - 0x1000))
        // Exactly the room between the page-aligned kernel end and the top.
        #expect(try InitrdPlacement.place(size: 128 * MiB - 0x200_1000, ramRanges: ram, kernelEnd: GuestAddress(0x200_0001),
                                          maxAddress: GuestAddress(0xFFFF_FFFF)) == GuestAddress(0x200_1000))
    }

    @Test("loads the bytes where it placed them")
    func load() throws {
        let memory = try makeMemory([(GuestAddress(0), 16 * MiB)])
        let location = try InitrdPlacement.load([9, 8, 7], into: memory, kernelEnd: GuestAddress(0x200000),
                                                maxAddress: GuestAddress(0xFFFF_FFFF))
        #expect(location == InitrdLocation(address: GuestAddress(16 * MiB - 0x1000), size: 3))
        #expect(try memory.readBytes(at: location.address, count: 3) == [9, 8, 7])
    }

    @Test("refuses what does not fit, naming the sizes")
    func doesNotFit() throws {
        let ram: [(start: GuestAddress, size: UInt64)] = [(GuestAddress(0), 128 * MiB)]
        let error = BootError.initrdDoesNotFit(size: 0x700_0000, kernelEnd: GuestAddress(0x200_0000),
                                               maxAddress: GuestAddress(0xFFFF_FFFF), largestGap: 0x600_0000)
        #expect(throws: error) {
            try InitrdPlacement.place(size: 0x700_0000, ramRanges: ram, kernelEnd: GuestAddress(0x200_0000),
                                      maxAddress: GuestAddress(0xFFFF_FFFF))
        }
        #expect(error.description.contains("0x7000000 bytes"))
        #expect(error.description.contains("0x6000000 bytes"))
        #expect(throws: BootError.initrdDoesNotFit(size: 0x1000, kernelEnd: GuestAddress(0x200_0000),
                                                   maxAddress: GuestAddress(0xFF_FFFF), largestGap: 0)) {
            try InitrdPlacement.place(size: 0x1000, ramRanges: ram, kernelEnd: GuestAddress(0x200_0000),
                                      maxAddress: GuestAddress(0xFF_FFFF))
        }
        #expect(throws: BootError.initrdEmpty) {
            try InitrdPlacement.place(size: 0, ramRanges: ram, kernelEnd: GuestAddress(0), maxAddress: GuestAddress(0xFFFF_FFFF))
        }
    }
}

@Suite("Kernel command line")
struct KernelCommandLineTests {
    @Test("joins parameters with single spaces and quotes values with spaces")
    func building() throws {
        var line = KernelCommandLine(maximumLength: 100)
        try line.append("console=ttyS0  quiet")
        try line.append(key: "root", value: "/dev/vda")
        try line.append(key: "dyndbg", value: "file foo.c +p")
        try line.append("init=\"/bin/my init\"")
        #expect(line.description == "console=ttyS0 quiet root=/dev/vda dyndbg=\"file foo.c +p\" init=\"/bin/my init\"")
        #expect(line.parameters.count == 5)
        #expect(line.length == line.description.utf8.count)
        #expect(line.nulTerminatedBytes.last == 0)
    }

    @Test("refuses a line longer than the limit, naming both")
    func limit() throws {
        var line = KernelCommandLine(maximumLength: 12)
        try line.append("console=ttyS")  // exactly 12
        #expect(throws: BootError.commandLineTooLong(length: 14, limit: 12)) { try line.append("x") }
        #expect(line.description == "console=ttyS")  // unchanged after the refusal
        #expect(BootError.commandLineTooLong(length: 14, limit: 12).description.contains("14 bytes"))

        let header = try syntheticSetupHeader()  // cmdline_size 0x7FF
        #expect(KernelCommandLine(for: header, capacity: 0x10000).maximumLength == 0x7FF)
        #expect(KernelCommandLine(for: header, capacity: 0x100).maximumLength == 0xFF)
    }

    @Test("refuses NUL, newlines, other control characters and unbalanced quotes")
    func badCharacters() {
        var line = KernelCommandLine(maximumLength: 100)
        #expect(throws: BootError.commandLineInvalidCharacter(parameter: "a\0b", scalar: 0)) { try line.append("a\0b") }
        #expect(throws: BootError.commandLineInvalidCharacter(parameter: "quiet\n", scalar: 0x0A)) { try line.append("quiet\n") }
        #expect(throws: BootError.commandLineInvalidCharacter(parameter: "a\tb", scalar: 0x09)) { try line.append("a\tb") }
        #expect(throws: BootError.commandLineUnbalancedQuote(parameter: "init=\"/bin/sh x")) { try line.append("init=\"/bin/sh x") }
        #expect(throws: BootError.commandLineInvalidKey(key: "a b")) { try line.append(key: "a b", value: "1") }
        #expect(throws: BootError.commandLineInvalidKey(key: "")) { try line.append(key: "", value: "1") }
        #expect(throws: BootError.commandLineInvalidValue(key: "k", value: "say \"hi\"")) { try line.append(key: "k", value: "say \"hi\"") }
        #expect(throws: BootError.commandLineInvalidCharacter(parameter: "k=a\nb", scalar: 0x0A)) { try line.append(key: "k", value: "a\nb") }
        #expect(line.parameters.isEmpty)
        #expect(BootError.commandLineInvalidCharacter(parameter: "quiet\n", scalar: 0x0A).description
            .contains("U+000a"))
    }

    @Test("writes the line NUL-terminated into guest memory")
    func write() throws {
        let memory = try makeMemory([(GuestAddress(0), 0x30000)])
        try memory.write(bytes: [UInt8](repeating: 0xFF, count: 32), at: GuestAddress(0x20000))
        var line = KernelCommandLine(maximumLength: 0xFFFF)
        try line.append("panic=1")
        try line.write(into: memory, at: GuestAddress(0x20000))
        #expect(try memory.readBytes(at: GuestAddress(0x20000), count: 8) == Array("panic=1".utf8) + [0])
    }
}
