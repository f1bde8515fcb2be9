import GuestMemory

/// Memory kinds of the BIOS e820 map, shared by the zero page and the PVH map.
public enum E820Type: UInt32, Equatable, Sendable {
    case ram = 1
    case reserved = 2
    case acpi = 3
    case nvs = 4
}

/// One range of the guest's physical memory map.
public struct E820Entry: Equatable, Sendable {
    public var address: UInt64
    public var size: UInt64
    public var type: E820Type

    public init(address: UInt64, size: UInt64, type: E820Type) {
        self.address = address
        self.size = size
        self.type = type
    }
}

/// The memory map the guest sees, sorted by address.
public struct E820Map: Equatable, Sendable {
    public var entries: [E820Entry]

    public init(entries: [E820Entry]) { self.entries = entries }

    /// The PC map for the given RAM: usable RAM except the EBDA/BIOS area
    /// `ebdaStart..<highMemoryStart`, which is reported reserved (the ACPI
    /// tables live there, so the guest must not reuse it). RAM ranges must
    /// already avoid the MMIO hole `mmioHoleStart..<mmioHoleEnd`; one that
    /// reaches into it is a VMM layout bug and is refused, not clipped.
    public static func standard(
        ramRanges: [(start: GuestAddress, size: UInt64)],
        ebdaStart: GuestAddress,
        highMemoryStart: GuestAddress,
        mmioHoleStart: GuestAddress,
        mmioHoleEnd: GuestAddress = GuestAddress(1 << 32)
    ) throws(BootError) -> E820Map {
        var entries: [E820Entry] = []
        var previousEnd: UInt64 = 0
        for range in ramRanges.sorted(by: { $0.start < $1.start }) {
            guard range.size > 0, let end = range.start.adding(range.size),
                  entries.isEmpty || range.start.rawValue >= previousEnd
            else { throw .e820BadRange(start: range.start, size: range.size) }
            previousEnd = end.rawValue
            guard end <= mmioHoleStart || range.start >= mmioHoleEnd else {
                throw .e820RangeInHole(start: range.start, size: range.size,
                                       holeStart: mmioHoleStart, holeEnd: mmioHoleEnd)
            }
            // The part below the reserved area, then the part above it.
            if range.start < ebdaStart {
                let pieceEnd = min(end, ebdaStart)
                entries.append(E820Entry(address: range.start.rawValue,
                                         size: pieceEnd.rawValue - range.start.rawValue, type: .ram))
            }
            if end > highMemoryStart {
                let pieceStart = max(range.start, highMemoryStart)
                entries.append(E820Entry(address: pieceStart.rawValue,
                                         size: end.rawValue - pieceStart.rawValue, type: .ram))
            }
        }
        if ebdaStart < highMemoryStart {
            entries.append(E820Entry(address: ebdaStart.rawValue,
                                     size: highMemoryStart.rawValue - ebdaStart.rawValue, type: .reserved))
        }
        entries.sort { $0.address < $1.address }
        return E820Map(entries: entries)
    }

    /// The standard map for the regions of `memory`.
    public static func standard(
        memory: GuestMemory,
        ebdaStart: GuestAddress,
        highMemoryStart: GuestAddress,
        mmioHoleStart: GuestAddress,
        mmioHoleEnd: GuestAddress = GuestAddress(1 << 32)
    ) throws(BootError) -> E820Map {
        try standard(ramRanges: memory.regions.map { ($0.start, $0.size) },
                     ebdaStart: ebdaStart, highMemoryStart: highMemoryStart,
                     mmioHoleStart: mmioHoleStart, mmioHoleEnd: mmioHoleEnd)
    }
}
