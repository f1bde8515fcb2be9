/// The refcount table and its blocks: how many references each host
/// cluster has. Any refcount width (order 0 to 6, 1 to 64 bits) is read and
/// written; updates are written through at once, so the file's refcounts
/// are never behind what the engine has allocated.
struct Refcounts {
    let file: ImageFile
    let clusterBits: UInt64
    let order: UInt64
    /// Offset of the refcount table in the file (moves when the table grows).
    var tableOffset: UInt64
    /// While the table is being moved, new entries go only to memory: the
    /// whole new table is written before the header names it.
    var relocating = false
    var table: [UInt64]
    /// Recently used blocks, by file offset. Always clean (write-through).
    var blocks: [UInt64: [UInt8]] = [:]
    static let cachedBlocks = 8

    var bits: UInt64 { 1 << order }
    var entriesPerBlock: UInt64 { (1 << clusterBits) * 8 / bits }
    var maximum: UInt64 { bits == 64 ? UInt64.max : (1 << bits) - 1 }
    /// Bits 9-63 of a refcount table entry hold the block's offset.
    static let offsetMask: UInt64 = ~0x1ff

    func blockOffset(forBlock index: UInt64) -> UInt64 {
        index < UInt64(table.count) ? table[Int(index)] & Self.offsetMask : 0
    }

    mutating func block(at offset: UInt64) throws(QCOW2Error) -> [UInt8] {
        if let cached = blocks[offset] { return cached }
        let bytes = try file.readBytes(count: 1 << Int(clusterBits), at: offset)
        if blocks.count >= Self.cachedBlocks, let victim = blocks.keys.first { blocks[victim] = nil }
        blocks[offset] = bytes
        return bytes
    }

    /// The refcount of host cluster `cluster` (0 where no block covers it).
    mutating func get(_ cluster: UInt64) throws(QCOW2Error) -> UInt64 {
        let offset = blockOffset(forBlock: cluster / entriesPerBlock)
        guard offset != 0 else { return 0 }
        let bytes = try block(at: offset)
        return Self.entry(in: bytes, index: cluster % entriesPerBlock, bits: bits)
    }

    /// Sets the refcount of a cluster a block already covers, and writes the changed bytes.
    mutating func set(_ cluster: UInt64, to value: UInt64) throws(QCOW2Error) {
        let offset = blockOffset(forBlock: cluster / entriesPerBlock)
        guard offset != 0 else {
            throw .invalidRefcount(path: file.path, cluster: cluster, reason: "has no refcount block")
        }
        var bytes = try block(at: offset)
        let index = cluster % entriesPerBlock
        let (start, length) = Self.store(value, in: &bytes, index: index, bits: bits)
        blocks[offset] = bytes
        try file.write(bytes: Array(bytes[start..<start + length]), at: offset + UInt64(start))
    }

    /// Entry `index` of a block: big-endian for widths of a byte or more,
    /// packed from the least significant bit for narrower ones (as QEMU does).
    static func entry(in bytes: [UInt8], index: UInt64, bits: UInt64) -> UInt64 {
        if bits >= 8 {
            let width = Int(bits / 8)
            let start = Int(index) * width
            guard start + width <= bytes.count else { return 0 }
            var value: UInt64 = 0
            for byte in bytes[start..<start + width] { value = value << 8 | UInt64(byte) }
            return value
        }
        let bitIndex = index * bits
        let byteIndex = Int(bitIndex / 8)
        guard byteIndex < bytes.count else { return 0 }
        return (UInt64(bytes[byteIndex]) >> (bitIndex % 8)) & ((1 << bits) - 1)
    }

    /// Stores entry `index`; returns the byte range changed.
    static func store(_ value: UInt64, in bytes: inout [UInt8], index: UInt64, bits: UInt64) -> (Int, Int) {
        if bits >= 8 {
            let width = Int(bits / 8)
            let start = Int(index) * width
            guard start + width <= bytes.count else { return (0, 0) }
            for byte in 0..<width {
                bytes[start + byte] = UInt8(truncatingIfNeeded: value >> UInt64(8 * (width - 1 - byte)))
            }
            return (start, width)
        }
        let bitIndex = index * bits
        let byteIndex = Int(bitIndex / 8)
        guard byteIndex < bytes.count else { return (0, 0) }
        let mask = UInt8(truncatingIfNeeded: ((1 << bits) - 1) << (bitIndex % 8))
        let shifted = UInt8(truncatingIfNeeded: value << (bitIndex % 8))
        bytes[byteIndex] = (bytes[byteIndex] & ~mask) | (shifted & mask)
        return (byteIndex, 1)
    }
}
