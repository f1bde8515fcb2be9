import GuestMemory

/// One module (the initrd) handed to a PVH kernel: `hvm_modlist_entry`.
public struct PVHModule: Equatable, Sendable {
    public var address: GuestAddress
    public var size: UInt64
    public var commandLineAddress: GuestAddress?

    public init(address: GuestAddress, size: UInt64, commandLineAddress: GuestAddress? = nil) {
        self.address = address
        self.size = size
        self.commandLineAddress = commandLineAddress
    }

    public init(initrd: InitrdLocation) {
        self.init(address: initrd.address, size: initrd.size)
    }
}

/// Xen's `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h),
/// version 1, which a PVH kernel finds through EBX. Version 1 carries the
/// memory map itself, so no e820 zero page is needed.
public struct PVHStartInfo: Equatable, Sendable {
    public static let magic: UInt32 = 0x336E_C578
    public static let version: UInt32 = 1
    /// sizeof(struct hvm_start_info), hvm_modlist_entry, hvm_memmap_table_entry.
    public static let size = 56
    public static let moduleEntrySize = 32
    public static let memoryMapEntrySize = 24

    public var flags: UInt32
    public var commandLineAddress: GuestAddress?
    public var rsdpAddress: GuestAddress?
    public var modules: [PVHModule]
    public var memoryMap: [E820Entry]

    public init(
        flags: UInt32 = 0,
        commandLineAddress: GuestAddress? = nil,
        rsdpAddress: GuestAddress? = nil,
        modules: [PVHModule] = [],
        memoryMap: [E820Entry] = []
    ) {
        self.flags = flags
        self.commandLineAddress = commandLineAddress
        self.rsdpAddress = rsdpAddress
        self.modules = modules
        self.memoryMap = memoryMap
    }

    /// The 56-byte start info pointing at tables at the given addresses;
    /// a pointer is 0 when its table is empty, as the kernel expects.
    public func startInfoBytes(moduleListAddress: GuestAddress, memoryMapAddress: GuestAddress) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.storeLE(Self.magic, at: 0)
        bytes.storeLE(Self.version, at: 4)
        bytes.storeLE(flags, at: 8)
        bytes.storeLE(UInt32(truncatingIfNeeded: modules.count), at: 12)
        bytes.storeLE(modules.isEmpty ? 0 : moduleListAddress.rawValue, at: 16)
        bytes.storeLE(commandLineAddress?.rawValue ?? 0, at: 24)
        bytes.storeLE(rsdpAddress?.rawValue ?? 0, at: 32)
        bytes.storeLE(memoryMap.isEmpty ? 0 : memoryMapAddress.rawValue, at: 40)
        bytes.storeLE(UInt32(truncatingIfNeeded: memoryMap.count), at: 48)
        return bytes
    }

    /// The module list: paddr, size, cmdline_paddr, reserved, 8 bytes each.
    public func moduleListBytes() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: modules.count * Self.moduleEntrySize)
        for (index, module) in modules.enumerated() {
            let base = index * Self.moduleEntrySize
            bytes.storeLE(module.address.rawValue, at: base)
            bytes.storeLE(module.size, at: base + 8)
            bytes.storeLE(module.commandLineAddress?.rawValue ?? 0, at: base + 16)
        }
        return bytes
    }

    /// The memory map: addr, size (8 bytes each), type, reserved (4 bytes each).
    public func memoryMapBytes() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: memoryMap.count * Self.memoryMapEntrySize)
        for (index, entry) in memoryMap.enumerated() {
            let base = index * Self.memoryMapEntrySize
            bytes.storeLE(entry.address, at: base)
            bytes.storeLE(entry.size, at: base + 8)
            bytes.storeLE(entry.type.rawValue, at: base + 16)
        }
        return bytes
    }

    /// Writes the start info at `address` (whose guest address goes in EBX),
    /// the module list and the memory map, after checking that the map has at
    /// most `memoryMapMaxEntries` entries and that the three do not overlap.
    public func write(
        into memory: GuestMemory,
        at address: GuestAddress,
        moduleListAt moduleListAddress: GuestAddress,
        memoryMapAt memoryMapAddress: GuestAddress,
        memoryMapMaxEntries: Int
    ) throws(BootError) {
        guard memoryMap.count <= memoryMapMaxEntries else {
            throw .tooManyMemoryMapEntries(count: memoryMap.count, maximum: memoryMapMaxEntries)
        }
        let tables: [(name: String, start: GuestAddress, bytes: [UInt8])] = [
            ("start info", address, startInfoBytes(moduleListAddress: moduleListAddress, memoryMapAddress: memoryMapAddress)),
            ("module list", moduleListAddress, moduleListBytes()),
            ("memory map", memoryMapAddress, memoryMapBytes()),
        ].filter { !$0.bytes.isEmpty }
        for (firstIndex, first) in tables.enumerated() {
            for second in tables[(firstIndex + 1)...]
            where Self.overlap(first.start, first.bytes.count, second.start, second.bytes.count) {
                throw .pvhTablesOverlap(
                    first: first.name, firstStart: first.start, firstSize: UInt64(first.bytes.count),
                    second: second.name, secondStart: second.start, secondSize: UInt64(second.bytes.count))
            }
        }
        for table in tables {
            do {
                try memory.write(bytes: table.bytes, at: table.start)
            } catch {
                throw error.during("writing the PVH \(table.name) at \(table.start)")
            }
        }
    }

    /// Whether two byte ranges intersect; ends saturate instead of wrapping.
    static func overlap(_ a: GuestAddress, _ aSize: Int, _ b: GuestAddress, _ bSize: Int) -> Bool {
        let aEnd = a.adding(UInt64(aSize))?.rawValue ?? .max
        let bEnd = b.adding(UInt64(bSize))?.rawValue ?? .max
        return a.rawValue < bEnd && b.rawValue < aEnd
    }
}
