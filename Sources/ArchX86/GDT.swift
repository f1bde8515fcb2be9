import GuestMemory

/// The boot GDT: flat segments for the first instructions the guest runs.
/// Guests replace it early; it only has to make the entry state legal.
public enum BootGDT {
    public static let code64Selector: UInt16 = 0x08
    public static let code32Selector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let tssSelector: UInt16 = 0x20

    /// Descriptors as (flags, base, limit) in the encoding Firecracker and
    /// Linux use: flags hold access byte (low 8 bits) and G/DB/L/AVL (bits 12-15).
    static let descriptors: [(flags: UInt16, base: UInt32, limit: UInt32)] = [
        (0, 0, 0),                  // null
        (0xA09B, 0, 0xFFFFF),       // 64-bit code, ring 0
        (0xC09B, 0, 0xFFFFF),       // 32-bit code, ring 0
        (0xC093, 0, 0xFFFFF),       // data, ring 0
        (0x808B, 0, 0xFFFFF),       // 32-bit busy TSS (VM entry needs a usable TR)
    ]

    /// Encodes one 8-byte segment descriptor.
    static func encode(flags: UInt16, base: UInt32, limit: UInt32) -> UInt64 {
        let base = UInt64(base), limit = UInt64(limit), flags = UInt64(flags)
        return ((base & 0xFF00_0000) << (56 - 24))
            | ((flags & 0x0000_F0FF) << 40)
            | ((limit & 0x000F_0000) << (48 - 16))
            | ((base & 0x00FF_FFFF) << 16)
            | (limit & 0x0000_FFFF)
    }

    /// The GDT's bytes, as 64-bit descriptors.
    public static var table: [UInt64] { descriptors.map { encode(flags: $0.flags, base: $0.base, limit: $0.limit) } }

    /// Writes the GDT at `Layout.gdtStart` and an empty IDT at `Layout.idtStart`.
    public static func write(into memory: GuestMemory) throws(GuestMemoryError) {
        for (position, descriptor) in table.enumerated() {
            try memory.write(descriptor, at: Layout.gdtStart + UInt64(position * 8))
        }
        try memory.write(UInt64(0), at: Layout.idtStart)
    }

    /// The KVM segment register for descriptor `index`, with its hidden state
    /// filled in as a real CPU would after loading the selector.
    public static func segment(index: Int) -> SegmentDescriptor {
        let entry = descriptors[index]
        let flags = entry.flags
        let granularity = (flags >> 15) & 1
        let limit = granularity == 1 ? (entry.limit << 12) | 0xFFF : entry.limit
        return SegmentDescriptor(
            base: UInt64(entry.base), limit: limit, selector: UInt16(index * 8),
            type: UInt8(flags & 0xF), present: UInt8((flags >> 7) & 1), dpl: UInt8((flags >> 5) & 3),
            db: UInt8((flags >> 14) & 1), s: UInt8((flags >> 4) & 1), l: UInt8((flags >> 13) & 1),
            g: UInt8(granularity), avl: UInt8((flags >> 12) & 1))
    }
}

/// A segment register's visible and hidden parts (mirrors `struct kvm_segment`).
public struct SegmentDescriptor: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt32
    public var selector: UInt16
    public var type: UInt8
    public var present: UInt8
    public var dpl: UInt8
    public var db: UInt8
    public var s: UInt8
    public var l: UInt8
    public var g: UInt8
    public var avl: UInt8
}
