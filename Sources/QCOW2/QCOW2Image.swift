import Glibc
import HostSystem
import Synchronization

/// An open qcow2 image (version 2 or 3): guest reads and writes at byte
/// offsets of its virtual disk. Every layout structure is checked on open;
/// at run time an L2 entry that cannot be right fails the request.
/// Thread-safe (one lock around the tables; the block device has one worker).
public final class QCOW2Image: Sendable {
    public let path: String
    public let header: QCOW2Header
    public let readOnly: Bool
    /// The guest-visible size in bytes.
    public var virtualSize: UInt64 { header.size }
    /// The backing file's path as opened (resolved against the image's folder), if any.
    public let backingPath: String?
    let engine: Mutex<Engine>

    /// Backing files followed at most (QEMU allows deeper chains, but a loop must end).
    public static let maximumChainDepth = 16

    /// Opens `path` (O_RDONLY or O_RDWR) as qcow2.
    public convenience init(path: String, readOnly: Bool) throws(QCOW2Error) {
        let descriptor: OwnedFileDescriptor
        do {
            descriptor = try OwnedFileDescriptor.open(path, flags: readOnly ? O_RDONLY : O_RDWR)
        } catch {
            throw .open(path: path, cause: error)
        }
        try self.init(file: descriptor, path: path, readOnly: readOnly, depth: 0)
    }

    /// Uses an already open descriptor (the disk layer opens and locks the
    /// file itself); it must be writable unless `readOnly`.
    public convenience init(file descriptor: OwnedFileDescriptor, path: String, readOnly: Bool) throws(QCOW2Error) {
        try self.init(file: descriptor, path: path, readOnly: readOnly, depth: 0)
    }

    init(file descriptor: OwnedFileDescriptor, path: String, readOnly: Bool, depth: Int) throws(QCOW2Error) {
        let file = ImageFile(descriptor: descriptor, path: path)
        let fileSize = try file.size()
        let header = try Self.readHeader(file, fileSize: fileSize)
        if !readOnly {
            if header.isMarkedCorrupt { throw .markedCorrupt(path: path) }
            if header.isDirty { throw .dirty(path: path) }
            if header.snapshotCount > 0 { throw .unsupportedFeature(path: path, feature: "internal snapshots, for writing") }
        }
        let layout = try Layout(header: header, fileSize: fileSize, path: path)
        let clusterSize = header.clusterSize
        let l1 = header.l1Size == 0 ? [] : decodeEntries(
            try file.readBytes(count: Int(header.l1Size) * 8, at: header.l1TableOffset), count: Int(header.l1Size))
        let refcountEntries = Int(UInt64(header.refcountTableClusters) * clusterSize / 8)
        let refcountTable = decodeEntries(
            try file.readBytes(count: refcountEntries * 8, at: header.refcountTableOffset), count: refcountEntries)
        let metadata = try layout.checkTables(l1: l1, refcountTable: refcountTable)

        var backing: Backing?
        var backingPath: String?
        if let name = header.backingFile {
            let resolved = Self.resolve(backing: name, of: path)
            guard depth < Self.maximumChainDepth else { throw .backingChainTooDeep(path: path, maximum: Self.maximumChainDepth) }
            backing = try Self.openBacking(resolved, format: header.backingFormat, of: path, depth: depth + 1)
            backingPath = resolved
        }

        self.path = path
        self.readOnly = readOnly
        self.backingPath = backingPath
        var current = header
        if !readOnly && header.version >= 3 && header.autoclearFeatures != 0 {
            // Autoclear features (bitmaps...) this engine does not maintain
            // become invalid once it writes: clear them, as QEMU does.
            current.autoclearFeatures = 0
            var bytes = [UInt8](repeating: 0, count: 8)
            bytes.storeBigEndian64(0, at: 0)
            try file.write(bytes: bytes, at: 88)
            try file.sync()
        }
        self.header = current
        engine = Mutex(Engine(
            file: file, header: current, readOnly: readOnly, clusterBits: UInt64(header.clusterBits), l1: l1,
            refcounts: Refcounts(file: file, clusterBits: UInt64(header.clusterBits), order: UInt64(header.refcountOrder),
                                 tableOffset: header.refcountTableOffset, table: refcountTable),
            fileEnd: roundUp(fileSize, to: clusterSize), metadataClusters: metadata, backing: backing))
    }

    deinit {
        // Unflushed L2 updates would otherwise be lost with the process's
        // exit even though their data was written.
        if !readOnly { engine.withLock { _ = try? $0.flush() } }
    }

    /// Reads the first cluster (or less of a short file) and parses it.
    static func readHeader(_ file: ImageFile, fileSize: UInt64) throws(QCOW2Error) -> QCOW2Header {
        let fixed = try file.readBytes(count: Int(min(fileSize, UInt64(QCOW2Header.fixedFieldsLength))), at: 0)
        let clusterBits = fixed.bigEndian32(at: 20)
        var bytes = fixed
        if (9...21).contains(clusterBits) {
            bytes = try file.readBytes(count: Int(min(fileSize, 1 << UInt64(clusterBits))), at: 0)
        }
        return try QCOW2Header.parse(bytes, path: file.path)
    }

    /// True if the file starts with the qcow2 magic.
    public static func hasMagic(_ descriptor: OwnedFileDescriptor) -> Bool {
        var bytes = [UInt8](repeating: 0, count: 4)
        // SAFETY: the buffer is `bytes`' storage, alive for the call.
        let count = bytes.withUnsafeMutableBytes { raw in
            (try? ImageFile(descriptor: descriptor, path: "").read(into: raw, at: 0)) ?? 0
        }
        return count == 4 && bytes.bigEndian32(at: 0) == QCOW2Header.magic
    }

    /// A backing file name relative to the image's folder unless absolute.
    static func resolve(backing name: String, of path: String) -> String {
        if name.hasPrefix("/") { return name }
        guard let slash = path.lastIndex(of: "/") else { return name }
        return String(path[...slash]) + name
    }

    static func openBacking(_ backingPath: String, format: String?, of path: String, depth: Int) throws(QCOW2Error) -> Backing {
        let descriptor: OwnedFileDescriptor
        let status: stat
        do {
            // O_NONBLOCK: an image naming a FIFO must not hang open(2).
            descriptor = try OwnedFileDescriptor.open(backingPath, flags: O_RDONLY | O_NONBLOCK)
            status = try descriptor.status()
        } catch {
            throw .backingFile(path: path, backingPath: backingPath, cause: .open(path: backingPath, cause: error))
        }
        let kind = status.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else {
            throw .backingFile(path: path, backingPath: backingPath,
                               cause: .unsupportedFeature(path: backingPath, feature: "a backing file that is \(fileKindName(mode: status.st_mode))"))
        }
        // A shared OFD lock, as a read-only disk takes: no other VMM may
        // write the backing file under this image while it is open.
        let locked: Bool
        do {
            locked = try descriptor.tryLockWholeFile(.shared)
        } catch {
            throw .backingFile(path: path, backingPath: backingPath, cause: .open(path: backingPath, cause: error))
        }
        guard locked else { throw .backingFileLocked(path: path, backingPath: backingPath) }
        let isQCOW2: Bool
        switch format {
        case "qcow2": isQCOW2 = true
        case "raw": isQCOW2 = false
        case nil, "": isQCOW2 = hasMagic(descriptor)
        case let .some(other): throw .unknownBackingFormat(path: path, format: other)
        }
        do throws(QCOW2Error) {
            if isQCOW2 {
                return .qcow2(try QCOW2Image(file: descriptor, path: backingPath, readOnly: true, depth: depth))
            }
            let file = ImageFile(descriptor: descriptor, path: backingPath)
            guard kind == S_IFBLK else { return .raw(file, size: try file.size()) }
            // A block device's st_size is 0; its end is where lseek stops.
            let end: off_t
            do {
                end = try systemCall("lseek \(backingPath) SEEK_END") { lseek(descriptor.rawValue, 0, SEEK_END) }
            } catch {
                throw .inspect(path: backingPath, cause: error)
            }
            return .raw(file, size: UInt64(max(end, 0)))
        } catch {
            if case .backingChainTooDeep = error { throw error }
            throw .backingFile(path: path, backingPath: backingPath, cause: error)
        }
    }

    // MARK: Guest I/O

    func checkRange(_ offset: UInt64, _ length: Int) throws(QCOW2Error) {
        let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
        guard !overflow, end <= virtualSize else {
            throw .outOfRange(path: path, offset: offset, length: UInt64(length), size: virtualSize)
        }
    }

    /// Fills `buffer` from the virtual disk at `offset`.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(QCOW2Error) {
        try checkRange(offset, buffer.count)
        try engine.withLock { (engine) throws(QCOW2Error) in try engine.read(at: offset, into: buffer) }
    }

    /// Writes `buffer` to the virtual disk at `offset`. Durable after `flush`.
    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(QCOW2Error) {
        guard !readOnly else { throw .readOnly(path: path) }
        try checkRange(offset, buffer.count)
        try engine.withLock { (engine) throws(QCOW2Error) in try engine.write(at: offset, from: buffer) }
    }

    /// Makes every completed write durable: data, then tables, in crash-safe order.
    public func flush() throws(QCOW2Error) {
        guard !readOnly else { return }
        try engine.withLock { (engine) throws(QCOW2Error) in try engine.flush() }
    }

    /// Deallocates the whole clusters in the range (they read as zeroes
    /// after); partial clusters are left as they are.
    public func discard(at offset: UInt64, length: UInt64) throws(QCOW2Error) {
        guard !readOnly else { throw .readOnly(path: path) }
        try checkRange(offset, Int(clamping: length))
        try engine.withLock { (engine) throws(QCOW2Error) in try engine.zero(at: offset, length: length, mustZero: false) }
    }

    /// Makes the range read as zeroes: the zero flag (or deallocation) for
    /// whole clusters, zero bytes for partial ones.
    public func writeZeroes(at offset: UInt64, length: UInt64) throws(QCOW2Error) {
        guard !readOnly else { throw .readOnly(path: path) }
        try checkRange(offset, Int(clamping: length))
        try engine.withLock { (engine) throws(QCOW2Error) in try engine.zero(at: offset, length: length, mustZero: true) }
    }
}

/// The image's fixed layout, checked against the file's size on open.
struct Layout {
    let header: QCOW2Header
    let fileSize: UInt64
    let path: String
    let clusterSize: UInt64
    /// Byte ranges of the fixed structures, cluster-rounded, with their names.
    var regions: [(name: String, start: UInt64, end: UInt64)] = []

    init(header: QCOW2Header, fileSize: UInt64, path: String) throws(QCOW2Error) {
        self.header = header
        self.fileSize = fileSize
        self.path = path
        clusterSize = header.clusterSize
        regions.append(("header", 0, clusterSize))
        let l2Span = clusterSize * (clusterSize / 8)
        let needed = header.size / l2Span + (header.size % l2Span == 0 ? 0 : 1)
        let l1Bytes = UInt64(header.l1Size) * 8
        guard l1Bytes <= QCOW2Header.maximumL1Bytes else {
            throw .tableTooLarge(path: path, table: "L1 table", bytes: l1Bytes, maximum: QCOW2Header.maximumL1Bytes)
        }
        guard UInt64(header.l1Size) >= needed else { throw .l1TooSmall(path: path, entries: header.l1Size, needed: needed) }
        if header.l1Size > 0 { try add("L1 table", offset: header.l1TableOffset, length: l1Bytes) }
        guard header.refcountTableClusters > 0 else {
            throw .invalidHeader(path: path, reason: "the refcount table has no clusters")
        }
        let refcountBytes = UInt64(header.refcountTableClusters) * clusterSize
        guard refcountBytes <= QCOW2Header.maximumRefcountTableBytes else {
            throw .tableTooLarge(path: path, table: "refcount table", bytes: refcountBytes, maximum: QCOW2Header.maximumRefcountTableBytes)
        }
        try add("refcount table", offset: header.refcountTableOffset, length: refcountBytes)
        if header.snapshotCount > 0 {
            try add("snapshot table", offset: header.snapshotsOffset, length: 1)
        }
    }

    func checkPlacement(_ name: String, offset: UInt64, length: UInt64) throws(QCOW2Error) {
        guard offset % clusterSize == 0 else { throw .misaligned(path: path, what: name, offset: offset) }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= fileSize else {
            throw .beyondEndOfFile(path: path, what: name, offset: offset, length: length, fileSize: fileSize)
        }
    }

    mutating func add(_ name: String, offset: UInt64, length: UInt64) throws(QCOW2Error) {
        try checkPlacement(name, offset: offset, length: length)
        let end = roundUp(offset + length, to: clusterSize)
        for region in regions where offset < region.end && region.start < end {
            throw .overlappingMetadata(path: path, what: name, other: region.name)
        }
        regions.append((name, offset, end))
    }

    /// Checks every L2 table and refcount block the tables name; returns the
    /// set of host clusters holding metadata.
    func checkTables(l1: [UInt64], refcountTable: [UInt64]) throws(QCOW2Error) -> Set<UInt64> {
        let bits = UInt64(header.clusterBits)
        var clusters = Set<UInt64>()
        for region in regions {
            var cluster = region.start >> bits
            while cluster < region.end >> bits {
                clusters.insert(cluster)
                cluster += 1
            }
        }
        let fixed = clusters
        for entry in l1 {
            let offset = entry & Engine.offsetMask
            guard offset != 0 else { continue }
            try checkPlacement("L2 table", offset: offset, length: clusterSize)
            if fixed.contains(offset >> bits) {
                throw .overlappingMetadata(path: path, what: "L2 table at \(offset)", other: name(of: offset))
            }
            // Two L1 entries sharing a table would alias two guest ranges.
            guard clusters.insert(offset >> bits).inserted else {
                throw .overlappingMetadata(path: path, what: "L2 table at \(offset)", other: "L2 table at \(offset)")
            }
        }
        let l2Tables = clusters.subtracting(fixed)
        for entry in refcountTable {
            let offset = entry & Refcounts.offsetMask
            guard offset != 0 else { continue }
            try checkPlacement("refcount block", offset: offset, length: clusterSize)
            if fixed.contains(offset >> bits) {
                throw .overlappingMetadata(path: path, what: "refcount block at \(offset)", other: name(of: offset))
            }
            if l2Tables.contains(offset >> bits) {
                throw .overlappingMetadata(path: path, what: "refcount block at \(offset)", other: "L2 table at \(offset)")
            }
            guard clusters.insert(offset >> bits).inserted else {
                throw .overlappingMetadata(path: path, what: "refcount block at \(offset)", other: "refcount block at \(offset)")
            }
        }
        return clusters
    }

    func name(of offset: UInt64) -> String {
        regions.first { offset >= $0.start && offset < $0.end }?.name ?? "metadata"
    }
}
