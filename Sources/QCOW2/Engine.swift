import CZlib

/// A backing file: reads past its end are zeroes.
enum Backing: Sendable {
    case raw(ImageFile, size: UInt64)
    case qcow2(QCOW2Image)

    var path: String {
        switch self {
        case let .raw(file, _): file.path
        case let .qcow2(image): image.path
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        let size: UInt64
        switch self {
        case let .raw(_, rawSize): size = rawSize
        case let .qcow2(image): size = image.virtualSize
        }
        let inside = offset >= size ? 0 : Int(min(UInt64(buffer.count), size - offset))
        if inside > 0 {
            // SAFETY: 0..<inside lies inside `buffer`.
            let head = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<inside])
            switch self {
            case let .raw(file, _): try file.readZeroFilled(into: head, at: offset)
            case let .qcow2(image): try image.read(at: offset, into: head)
            }
        }
        if inside < buffer.count, let base = buffer.baseAddress {
            // SAFETY: inside..<count lies inside `buffer`.
            (base + inside).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - inside)
        }
    }
}

/// The mutable state of an open image: tables, caches, the allocation
/// point. Only used under `QCOW2Image`'s lock.
struct Engine {
    let file: ImageFile
    let header: QCOW2Header
    let readOnly: Bool
    let clusterBits: UInt64
    var l1: [UInt64]
    /// L1 entries changed in memory, written by `writeMetadata`.
    var dirtyL1: Set<Int> = []
    var l2Cache = L2Cache()
    var refcounts: Refcounts
    /// Where the next cluster is allocated: new clusters always go at the
    /// end of the file, so a freed cluster is never reused while a stale
    /// table might still name it.
    var fileEnd: UInt64
    /// Host clusters holding metadata (header, tables, refcount blocks): no
    /// L2 entry may point at one.
    var metadataClusters: Set<UInt64>
    /// Host clusters to release once the L2 tables that stopped naming them are durable.
    var pendingFrees: [UInt64] = []
    let backing: Backing?
    /// The last compressed cluster inflated (its host offset), as sequential reads hit it repeatedly.
    var inflated: (host: UInt64, bytes: [UInt8])?

    // MARK: Reading

    mutating func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(QCOW2Error) {
        var done = 0
        while done < buffer.count {
            let guestOffset = offset + UInt64(done)
            let inCluster = guestOffset & (clusterSize - 1)
            let count = Int(min(clusterSize - inCluster, UInt64(buffer.count - done)))
            // SAFETY: done..<done+count lies inside `buffer`.
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count])
            try readPiece(try lookup(guestOffset), guestOffset: guestOffset, into: piece)
            done += count
        }
    }

    /// Reads part of one guest cluster of kind `kind`.
    mutating func readPiece(_ kind: ClusterKind, guestOffset: UInt64, into piece: UnsafeMutableRawBufferPointer) throws(QCOW2Error) {
        let inCluster = guestOffset & (clusterSize - 1)
        switch kind {
        case .unallocated:
            if let backing {
                try backing.read(into: piece, at: guestOffset)
            } else {
                piece.initializeMemory(as: UInt8.self, repeating: 0)
            }
        case .zero:
            piece.initializeMemory(as: UInt8.self, repeating: 0)
        case let .normal(host, _):
            try file.readZeroFilled(into: piece, at: host + inCluster)
        case let .compressed(host, length):
            let bytes = try inflate(host: host, length: length, guestOffset: guestOffset)
            // SAFETY: inCluster + piece.count ≤ cluster size = bytes.count.
            bytes.withUnsafeBytes { source in
                piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[Int(inCluster)..<Int(inCluster) + piece.count]))
            }
        }
    }

    mutating func inflate(host: UInt64, length: UInt64, guestOffset: UInt64) throws(QCOW2Error) -> [UInt8] {
        if let inflated, inflated.host == host { return inflated.bytes }
        // The last compressed cluster may end mid-sector at the end of the file.
        let fileSize = try file.size()
        guard host < fileSize else {
            throw .invalidL2Entry(path: file.path, guestOffset: guestOffset, entry: host, reason: "points beyond the end of the file")
        }
        var input = [UInt8](repeating: 0, count: Int(min(length, fileSize - host, 2 * clusterSize)))
        // SAFETY: the buffer is `input`'s storage, alive for the call.
        let readResult = input.withUnsafeMutableBytes { raw in
            Result { () throws(QCOW2Error) -> Int in try file.read(into: raw, at: host) }
        }
        let got = try readResult.get()
        var output = [UInt8](repeating: 0, count: Int(clusterSize))
        // SAFETY: both buffers are the arrays' storage, sized as passed.
        let status = input.withUnsafeBytes { source in
            output.withUnsafeMutableBytes { target in
                czlib_inflate_raw(source.baseAddress, got, target.baseAddress, target.count)
            }
        }
        guard status == 0 else { throw .decompression(path: file.path, guestOffset: guestOffset) }
        inflated = (host, output)
        return output
    }

    /// A whole guest cluster's current content, for copy-on-write.
    mutating func clusterContent(_ kind: ClusterKind, clusterOffset: UInt64) throws(QCOW2Error) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(clusterSize))
        if case .zero = kind { return bytes }
        if case .unallocated = kind, backing == nil { return bytes }
        // SAFETY: the buffer is `bytes`' storage, alive for the call.
        let result = bytes.withUnsafeMutableBytes { raw in
            Result { () throws(QCOW2Error) in try readPiece(kind, guestOffset: clusterOffset, into: raw) }
        }
        try result.get()
        return bytes
    }

    // MARK: Writing

    mutating func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(QCOW2Error) {
        var done = 0
        while done < buffer.count {
            let guestOffset = offset + UInt64(done)
            let inCluster = guestOffset & (clusterSize - 1)
            let count = Int(min(clusterSize - inCluster, UInt64(buffer.count - done)))
            // SAFETY: done..<done+count lies inside `buffer`.
            try writePiece(at: guestOffset, from: UnsafeRawBufferPointer(rebasing: buffer[done..<done + count]))
            done += count
        }
    }

    /// Writes within one guest cluster: in place if the cluster is this
    /// image's own (refcount one), else into a newly allocated cluster
    /// filled with the old content around the new bytes (copy-on-write).
    mutating func writePiece(at guestOffset: UInt64, from piece: UnsafeRawBufferPointer) throws(QCOW2Error) {
        let inCluster = guestOffset & (clusterSize - 1)
        guard let slot = try l2Slot(for: guestOffset, allocate: true) else { return }
        let index = l2Index(guestOffset)
        let kind = try classify(l2Cache.tables[slot].entries[index], guestOffset: guestOffset)
        if case let .normal(host, copied) = kind, copied {
            try file.write(piece, at: host + inCluster)
            return
        }
        let clusterOffset = guestOffset - inCluster
        var content: [UInt8]
        if UInt64(piece.count) == clusterSize {
            content = Array(piece)
        } else {
            content = try clusterContent(kind, clusterOffset: clusterOffset)
            // SAFETY: inCluster + piece.count ≤ cluster size = content.count.
            content.withUnsafeMutableBytes { target in
                UnsafeMutableRawBufferPointer(rebasing: target[Int(inCluster)..<Int(inCluster) + piece.count]).copyMemory(from: piece)
            }
        }
        try replaceCluster(slot: slot, index: index, old: kind, content: content)
    }

    /// Points an L2 entry at a new cluster holding `content`: allocate
    /// (refcount written), write the data, then update the entry in memory;
    /// the old cluster is released after the next durable L2 write.
    mutating func replaceCluster(slot: Int, index: Int, old: ClusterKind, content: [UInt8]) throws(QCOW2Error) {
        let host = try allocateCluster()
        try file.write(bytes: content, at: host)
        if let inflated, case let .compressed(oldHost, _) = old, inflated.host == oldHost { self.inflated = nil }
        l2Cache.tables[slot].entries[index] = host | Self.copiedFlag
        l2Cache.tables[slot].dirty = true
        scheduleRelease(old)
    }

    mutating func scheduleRelease(_ kind: ClusterKind) {
        switch kind {
        case let .normal(host, _):
            pendingFrees.append(host >> clusterBits)
        case let .zero(host) where host != 0:
            pendingFrees.append(host >> clusterBits)
        case let .compressed(host, length):
            let first = host >> clusterBits
            let last = (host + length - 1) >> clusterBits
            for cluster in first...last { pendingFrees.append(cluster) }
        default:
            break
        }
    }

    // MARK: Discard and write zeroes

    /// Makes whole guest clusters read as zeroes and releases their host
    /// clusters; partial clusters are written with zeroes when `mustZero`
    /// (write-zeroes), left alone otherwise (discard is a hint).
    mutating func zero(at offset: UInt64, length: UInt64, mustZero: Bool) throws(QCOW2Error) {
        var position = offset
        let end = offset + length
        while position < end {
            // A whole unmapped L2 span without a backing file already reads as zeroes:
            // skip it, so that discarding a mostly empty disk is not a walk over every cluster.
            let index = l1Index(position)
            if backing == nil, index < l1.count, l1[index] & Self.offsetMask == 0 {
                let spanEnd = (UInt64(index) + 1) << (clusterBits + l2Bits)
                position = min(end, spanEnd)
                continue
            }
            let inCluster = position & (clusterSize - 1)
            let count = min(clusterSize - inCluster, end - position)
            if count == clusterSize {
                try zeroCluster(at: position, mustZero: mustZero)
            } else if mustZero {
                let zeroes = [UInt8](repeating: 0, count: Int(count))
                // SAFETY: the buffer is `zeroes`' storage, alive for the call.
                let result = zeroes.withUnsafeBytes { raw in
                    Result { () throws(QCOW2Error) in try writePiece(at: position, from: raw) }
                }
                try result.get()
            }
            position += count
        }
    }

    mutating func zeroCluster(at guestOffset: UInt64, mustZero: Bool) throws(QCOW2Error) {
        let kind = try lookup(guestOffset)
        if kind == .unallocated && backing == nil { return }
        if case .zero(0) = kind { return }
        // Version 2 has no zero flag: an unallocated entry shows the backing file.
        guard header.version >= 3 || backing == nil else {
            if mustZero {
                let zeroes = [UInt8](repeating: 0, count: Int(clusterSize))
                // SAFETY: the buffer is `zeroes`' storage, alive for the call.
                let result = zeroes.withUnsafeBytes { raw in
                    Result { () throws(QCOW2Error) in try writePiece(at: guestOffset, from: raw) }
                }
                try result.get()
            }
            return
        }
        guard let slot = try l2Slot(for: guestOffset, allocate: true) else { return }
        let index = l2Index(guestOffset)
        l2Cache.tables[slot].entries[index] = header.version >= 3 ? Self.zeroFlag : 0
        l2Cache.tables[slot].dirty = true
        if let inflated, case let .compressed(oldHost, _) = kind, inflated.host == oldHost { self.inflated = nil }
        scheduleRelease(kind)
    }

    // MARK: Allocation

    /// A new cluster at the end of the file, its refcount already one.
    mutating func allocateCluster() throws(QCOW2Error) -> UInt64 {
        let host = fileEnd
        fileEnd += clusterSize
        try incrementRefcount(host >> clusterBits)
        return host
    }

    mutating func incrementRefcount(_ cluster: UInt64) throws(QCOW2Error) {
        let block = cluster / refcounts.entriesPerBlock
        if refcounts.blockOffset(forBlock: block) == 0 { try addRefcountBlock(block) }
        let value = try refcounts.get(cluster)
        guard value < refcounts.maximum else {
            throw .invalidRefcount(path: file.path, cluster: cluster, reason: "would overflow")
        }
        try refcounts.set(cluster, to: value + 1)
    }

    mutating func decrementRefcount(_ cluster: UInt64) throws(QCOW2Error) {
        let value = try refcounts.get(cluster)
        guard value > 0 else { throw .invalidRefcount(path: file.path, cluster: cluster, reason: "is already zero") }
        try refcounts.set(cluster, to: value - 1)
    }

    /// A refcount block for block index `block`, at the end of the file:
    /// written (counting itself if it covers itself) before the table entry
    /// naming it.
    mutating func addRefcountBlock(_ block: UInt64) throws(QCOW2Error) {
        if block >= UInt64(refcounts.table.count) {
            try growRefcountTable(covering: block)
            // Counting the new table's own clusters may have made this very block.
            if refcounts.blockOffset(forBlock: block) != 0 { return }
        }
        guard block < UInt64(refcounts.table.count) else { throw .refcountTableFull(path: file.path) }
        let host = fileEnd
        fileEnd += clusterSize
        let own = host >> clusterBits
        var bytes = [UInt8](repeating: 0, count: Int(clusterSize))
        let coversItself = own / refcounts.entriesPerBlock == block
        if coversItself {
            _ = Refcounts.store(1, in: &bytes, index: own % refcounts.entriesPerBlock, bits: refcounts.bits)
        }
        try file.write(bytes: bytes, at: host)
        refcounts.table[Int(block)] = host
        if !refcounts.relocating {
            var entry = [UInt8](repeating: 0, count: 8)
            entry.storeBigEndian64(host, at: 0)
            try file.write(bytes: entry, at: refcounts.tableOffset + block * 8)
        }
        metadataClusters.insert(own)
        if !coversItself { try incrementRefcount(own) }
    }

    /// Moves the refcount table to the end of the file, at least twice as
    /// large: the new table (with blocks for its own clusters) is written and
    /// synced, then the header names it in one write, synced, and only then
    /// are the old table's clusters released.
    mutating func growRefcountTable(covering block: UInt64) throws(QCOW2Error) {
        guard !refcounts.relocating else { throw .refcountTableFull(path: file.path) }
        let perCluster = clusterSize / 8
        let oldCount = UInt64(refcounts.table.count)
        let wanted = roundUp(max(oldCount * 2, block + 2), to: perCluster)
        let bytes = wanted * 8
        guard bytes <= QCOW2Header.maximumRefcountTableBytes else { throw .refcountTableFull(path: file.path) }
        let oldOffset = refcounts.tableOffset
        let oldClusters = roundUp(oldCount * 8, to: clusterSize) / clusterSize
        let newOffset = fileEnd
        let newClusters = bytes / clusterSize
        fileEnd += bytes
        refcounts.table += [UInt64](repeating: 0, count: Int(wanted - oldCount))
        refcounts.relocating = true
        for cluster in 0..<newClusters {
            do {
                try incrementRefcount((newOffset >> clusterBits) + cluster)
            } catch {
                refcounts.relocating = false
                throw error
            }
            metadataClusters.insert((newOffset >> clusterBits) + cluster)
        }
        refcounts.relocating = false
        try file.write(bytes: encodeEntries(refcounts.table), at: newOffset)
        try file.sync()
        var fields = [UInt8](repeating: 0, count: 12)
        fields.storeBigEndian64(newOffset, at: 0)
        fields.storeBigEndian32(UInt32(newClusters), at: 8)
        try file.write(bytes: fields, at: 48)
        try file.sync()
        refcounts.tableOffset = newOffset
        for cluster in 0..<oldClusters {
            try decrementRefcount((oldOffset >> clusterBits) + cluster)
        }
    }

    // MARK: Flush

    mutating func flush() throws(QCOW2Error) {
        try writeMetadata()
        try file.sync()
    }
}
