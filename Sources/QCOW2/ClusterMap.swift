/// One L2 table in the cache. A dirty table holds entries not yet on disk:
/// L2 updates are written back only after the data they point at is
/// durable (see `Engine.writeMetadata`).
struct L2Table {
    var offset: UInt64
    var entries: [UInt64]
    var dirty: Bool
    var lastUse: UInt64
}

/// A small LRU cache of L2 tables (16 tables: 8 GiB of guest data with 64 KiB clusters).
struct L2Cache {
    static let capacity = 16
    var tables: [L2Table] = []
    var clock: UInt64 = 0

    mutating func touch(_ slot: Int) {
        clock += 1
        tables[slot].lastUse = clock
    }
}

/// What an L2 entry says about one guest cluster.
enum ClusterKind: Equatable {
    /// Not allocated: the backing file's data, or zeroes.
    case unallocated
    /// Reads as zeroes (version 3's zero flag); `host` is a preallocated cluster or 0.
    case zero(host: UInt64)
    /// Data at `host`; `copied` means its refcount is exactly one (safe to write in place).
    case normal(host: UInt64, copied: Bool)
    /// Deflated data of `length` bytes at `host` (not cluster-aligned).
    case compressed(host: UInt64, length: UInt64)
}

extension Engine {
    /// Bits 9-55 of L1 and standard L2 entries.
    static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let copiedFlag: UInt64 = 1 << 63
    static let compressedFlag: UInt64 = 1 << 62
    static let zeroFlag: UInt64 = 1

    var clusterSize: UInt64 { 1 << clusterBits }
    var l2Bits: UInt64 { clusterBits - 3 }
    var l2EntryCount: Int { 1 << Int(l2Bits) }

    func l1Index(_ guestOffset: UInt64) -> Int { Int(guestOffset >> (clusterBits + l2Bits)) }
    func l2Index(_ guestOffset: UInt64) -> Int { Int((guestOffset >> clusterBits) & ((1 << l2Bits) - 1)) }

    /// The cache slot of the L2 table for `guestOffset`; nil if there is none
    /// and `allocate` is false. With `allocate`, a missing table is made
    /// (zeroed, dirty) and the L1 entry updated in memory.
    mutating func l2Slot(for guestOffset: UInt64, allocate: Bool) throws(QCOW2Error) -> Int? {
        let index = l1Index(guestOffset)
        guard index < l1.count else {
            throw .outOfRange(path: file.path, offset: guestOffset, length: 1, size: header.size)
        }
        let entry = l1[index]
        let offset = entry & Self.offsetMask
        if offset == 0 {
            guard allocate else { return nil }
            let slot = try freeSlot()
            let newOffset = try allocateCluster()
            metadataClusters.insert(newOffset >> clusterBits)
            l2Cache.tables[slot] = L2Table(offset: newOffset, entries: Array(repeating: 0, count: l2EntryCount), dirty: true, lastUse: 0)
            l2Cache.touch(slot)
            l1[index] = newOffset | Self.copiedFlag
            dirtyL1.insert(index)
            return slot
        }
        if allocate && entry & Self.copiedFlag == 0 {
            throw .unsupportedFeature(path: file.path, feature: "L2 tables shared with a snapshot, for writing")
        }
        if let slot = l2Cache.tables.firstIndex(where: { $0.offset == offset }) {
            l2Cache.touch(slot)
            return slot
        }
        let bytes = try file.readBytes(count: Int(clusterSize), at: offset)
        let slot = try freeSlot()
        l2Cache.tables[slot] = L2Table(offset: offset, entries: decodeEntries(bytes, count: l2EntryCount), dirty: false, lastUse: 0)
        l2Cache.touch(slot)
        return slot
    }

    /// A slot to load a table into: a new one while the cache has room, else
    /// the least recently used, whose dirty entries are written first (with
    /// every other dirty table, in the durable order).
    mutating func freeSlot() throws(QCOW2Error) -> Int {
        if l2Cache.tables.count < L2Cache.capacity {
            l2Cache.tables.append(L2Table(offset: 0, entries: [], dirty: false, lastUse: 0))
            return l2Cache.tables.count - 1
        }
        var victim = 0
        for slot in l2Cache.tables.indices where l2Cache.tables[slot].lastUse < l2Cache.tables[victim].lastUse { victim = slot }
        if l2Cache.tables[victim].dirty { try writeMetadata() }
        // The slot is reused: make sure a failed load cannot leave a stale table findable.
        l2Cache.tables[victim] = L2Table(offset: 0, entries: [], dirty: false, lastUse: 0)
        return victim
    }

    /// The cluster kind of the guest cluster at `guestOffset`.
    mutating func lookup(_ guestOffset: UInt64) throws(QCOW2Error) -> ClusterKind {
        guard let slot = try l2Slot(for: guestOffset, allocate: false) else { return .unallocated }
        return try classify(l2Cache.tables[slot].entries[l2Index(guestOffset)], guestOffset: guestOffset)
    }

    /// Decodes and checks an L2 entry: a data cluster must be aligned and
    /// must not lie in metadata, so that a corrupt table can never make a
    /// write land on the image's own tables.
    func classify(_ entry: UInt64, guestOffset: UInt64) throws(QCOW2Error) -> ClusterKind {
        if entry & Self.compressedFlag != 0 {
            // Bits 0..x-1 hold the offset, x..61 the extra 512-byte sectors.
            let shift = 62 - (clusterBits - 8)
            let host = entry & ((1 << shift) - 1)
            let sectors = (entry >> shift) & ((1 << (62 - shift)) - 1)
            let length = (sectors + 1) * 512 - (host & 511)
            guard host >= clusterSize, !metadataClusters.contains(host >> clusterBits) else {
                throw .invalidL2Entry(path: file.path, guestOffset: guestOffset, entry: entry, reason: "points into metadata")
            }
            return .compressed(host: host, length: length)
        }
        let host = entry & Self.offsetMask
        let zero = header.version >= 3 && entry & Self.zeroFlag != 0
        if host == 0 { return zero ? .zero(host: 0) : .unallocated }
        guard host % clusterSize == 0 else {
            throw .invalidL2Entry(path: file.path, guestOffset: guestOffset, entry: entry, reason: "is not cluster-aligned")
        }
        guard !metadataClusters.contains(host >> clusterBits) else {
            throw .invalidL2Entry(path: file.path, guestOffset: guestOffset, entry: entry, reason: "points into metadata")
        }
        if zero { return .zero(host: host) }
        return .normal(host: host, copied: entry & Self.copiedFlag != 0)
    }

    /// Writes every dirty L2 table and L1 entry, in the order that keeps the
    /// file consistent at every instant: data and refcounts are synced before
    /// an L2 entry names them, L2 tables before the L1 entries naming them,
    /// and clusters are released (refcounts decremented) only once no
    /// durable table names them. A crash therefore loses unflushed writes,
    /// at worst leaks clusters, and never exposes unwritten data.
    mutating func writeMetadata() throws(QCOW2Error) {
        let dirtyTables = l2Cache.tables.indices.filter { l2Cache.tables[$0].dirty }
        guard !dirtyTables.isEmpty || !dirtyL1.isEmpty || !pendingFrees.isEmpty else { return }
        try file.sync()
        for slot in dirtyTables {
            try file.write(bytes: encodeEntries(l2Cache.tables[slot].entries), at: l2Cache.tables[slot].offset)
            l2Cache.tables[slot].dirty = false
        }
        if !dirtyL1.isEmpty {
            try file.sync()
            for index in dirtyL1.sorted() {
                var bytes = [UInt8](repeating: 0, count: 8)
                bytes.storeBigEndian64(l1[index], at: 0)
                try file.write(bytes: bytes, at: header.l1TableOffset + UInt64(index) * 8)
            }
            dirtyL1.removeAll()
        }
        try file.sync()
        let frees = pendingFrees
        pendingFrees.removeAll()
        for cluster in frees { try decrementRefcount(cluster) }
    }
}
