import Glibc
import HostSystem
import SnapshotFormat

/// Where each guest RAM region lives in a snapshot memory file: the
/// regions in guest-address order, each at a page-aligned file offset. The
/// snapshot state file carries it (section "GMEM") so restore maps the same
/// regions from the same offsets.
public struct GuestMemoryFileLayout: Equatable, Sendable {
    public struct Region: Equatable, Sendable {
        public var start: GuestAddress
        public var size: UInt64
        public var fileOffset: UInt64

        public init(start: GuestAddress, size: UInt64, fileOffset: UInt64) {
            self.start = start
            self.size = size
            self.fileOffset = fileOffset
        }
    }

    public var regions: [Region]

    public init(regions: [Region]) { self.regions = regions }

    public static let sectionTag = SectionTag("GMEM")
    /// More regions than any x86 layout has (Swiftlet uses one or two).
    public static let maximumRegions = 64
    /// mmap offsets must be page aligned; x86_64 pages are 4 KiB.
    public static let fileAlignment: UInt64 = 4096

    /// The layout for `regions` written one after another from offset 0,
    /// each starting on a page boundary.
    public init(sequentialFor regions: [GuestMemoryRegion]) {
        var offset: UInt64 = 0
        self.regions = regions.map { region in
            defer { offset = (offset + region.size + Self.fileAlignment - 1) & ~(Self.fileAlignment - 1) }
            return Region(start: region.start, size: region.size, fileOffset: offset)
        }
    }

    /// The file size the regions need (the end of the furthest one), or
    /// nil if an offset plus size wraps past 2^64.
    public var requiredFileSize: UInt64? {
        var end: UInt64 = 0
        for region in regions {
            let (regionEnd, overflow) = region.fileOffset.addingReportingOverflow(region.size)
            if overflow { return nil }
            end = max(end, regionEnd)
        }
        return end
    }

    /// Writes the layout into the current section: a count, then each
    /// region's start, size and file offset (UInt64s).
    public func encode(into encoder: inout StateEncoder) {
        encoder.encode(array: regions) { encoder, region in
            encoder.encode(region.start.rawValue)
            encoder.encode(region.size)
            encoder.encode(region.fileOffset)
        }
    }

    /// Reads what `encode(into:)` wrote. The regions are checked when mapped.
    public init(decoding decoder: inout StateDecoder) throws(StateDecodingError) {
        regions = try decoder.decodeArray(maximumCount: Self.maximumRegions, minimumElementSize: 24) { (decoder) throws(StateDecodingError) in
            Region(start: GuestAddress(try decoder.decode(UInt64.self)), size: try decoder.decode(), fileOffset: try decoder.decode())
        }
    }
}

extension GuestMemory {
    /// Where `writeMemoryFile` puts each region.
    public var fileLayout: GuestMemoryFileLayout { GuestMemoryFileLayout(sequentialFor: regions) }

    /// Writes all of guest RAM to a new file at `path` (mode 0600: it is the
    /// guest's data), region after region as `fileLayout` says, atomically
    /// (temporary file, fsync, rename, fsync of the directory). The vCPUs
    /// and devices must be paused, or the file mixes moments. Returns the
    /// layout, for the state file.
    ///
    /// All-zero 4 KiB pages are not written (as QEMU skips zero pages): the
    /// file is new and sized to the layout, so they stay holes, which read
    /// as zeros, also through a MAP_PRIVATE mapping. A guest that touched
    /// little of its RAM gives a file that allocates little of its size.
    public func writeMemoryFile(to path: String) throws(GuestMemoryError) -> GuestMemoryFileLayout {
        let layout = fileLayout
        do {
            try AtomicFile.write(to: path) { (file) throws(SystemCallError) in
                for (region, placement) in zip(regions, layout.regions) {
                    try Self.writeNonZeroPages(region, to: file, at: placement.fileOffset)
                }
                // Zero pages and alignment gaps stay holes; the size makes the last region end the file.
                let size = off_t(clamping: layout.requiredFileSize ?? 0)
                _ = try systemCall("ftruncate \(path)") { ftruncate(file.rawValue, size) }
            }
        } catch {
            switch error {
            case let .system(cause), let .body(cause): throw .memoryFile(path: path, cause: cause)
            }
        }
        return layout
    }

    /// Writes only the pages `dirty` marks (per region, one bit per 4 KiB
    /// page in 64-bit words, as KVM_GET_DIRTY_LOG gives them) into the file
    /// at `path`, at the offsets `fileLayout` gives, as Firecracker's diff
    /// snapshots do: the file is created if missing (mode 0600) and sized to
    /// the layout, and pages not marked keep what the file holds (holes in a
    /// new file). Written over a copy of the previous snapshot's memory file
    /// it gives the current RAM. Not atomic: it updates the file in place.
    public func writeDirtyPages(to path: String, dirty: [[UInt64]]) throws(GuestMemoryError) -> GuestMemoryFileLayout {
        let layout = fileLayout
        do {
            let file = try OwnedFileDescriptor.open(path, flags: O_WRONLY | O_CREAT, mode: 0o600)
            let size = off_t(clamping: layout.requiredFileSize ?? 0)
            _ = try systemCall("ftruncate \(path)") { ftruncate(file.rawValue, size) }
            let page = DirtyPageBitmap.pageSize
            for (index, (region, placement)) in zip(regions, layout.regions).enumerated() where index < dirty.count {
                let words = dirty[index]
                let pages = (region.size + page - 1) / page
                var current: UInt64 = 0
                while current < pages {
                    // A run of marked pages is one write.
                    guard Self.isMarked(words, current) else { current += 1; continue }
                    var end = current + 1
                    while end < pages && Self.isMarked(words, end) { end += 1 }
                    let length = min(end * page, region.size) - current * page
                    try Self.write(region, from: current * page, length: length, to: file, at: placement.fileOffset + current * page)
                    current = end
                }
            }
            _ = try systemCall("fsync \(path)") { fsync(file.rawValue) }
        } catch {
            throw .memoryFile(path: path, cause: error)
        }
        return layout
    }

    private static func isMarked(_ words: [UInt64], _ page: UInt64) -> Bool {
        let word = Int(page / 64)
        return word < words.count && words[word] & (1 << (page % 64)) != 0
    }

    /// Writes one region's pages that are not all zero at `offset` plus
    /// their place in the region, each run of such pages in one write; the
    /// zero pages between are skipped (holes in a new file).
    static func writeNonZeroPages(_ region: GuestMemoryRegion, to file: OwnedFileDescriptor, at offset: UInt64) throws(SystemCallError) {
        let page = GuestMemoryFileLayout.fileAlignment
        var position: UInt64 = 0
        var run: UInt64?
        while position < region.size {
            let length = min(page, region.size - position)
            // SAFETY: [position, position + length) lies inside the region's mapping of `size` bytes.
            let zero = isZero(UnsafeRawPointer(region.hostAddress + Int(position)), count: Int(length))
            if zero, let start = run {
                try write(region, from: start, length: position - start, to: file, at: offset + start)
                run = nil
            } else if !zero, run == nil {
                run = position
            }
            position += length
        }
        if let start = run {
            try write(region, from: start, length: region.size - start, to: file, at: offset + start)
        }
    }

    /// Whether `count` bytes at `bytes` are all zero: the first word is zero
    /// and every byte equals the one a word further (memcmp of the buffer
    /// against itself shifted by 8, which glibc does at vector speed).
    static func isZero(_ bytes: UnsafeRawPointer, count: Int) -> Bool {
        let word = MemoryLayout<UInt64>.size
        guard count >= 2 * word else {
            for index in 0..<count where bytes.load(fromByteOffset: index, as: UInt8.self) != 0 { return false }
            return true
        }
        return bytes.loadUnaligned(as: UInt64.self) == 0 && memcmp(bytes, bytes + word, count - word) == 0
    }

    /// Writes `length` bytes of `region` from `start` at file `offset`.
    private static func write(_ region: GuestMemoryRegion, from start: UInt64, length: UInt64, to file: OwnedFileDescriptor,
                              at offset: UInt64) throws(SystemCallError) {
        var done: UInt64 = 0
        while done < length {
            let chunk = Int(min(length - done, 1 << 30))
            // SAFETY: [start + done, start + done + chunk) lies inside the region's mapping of `size` bytes.
            let source = UnsafeRawPointer(region.hostAddress + Int(start + done))
            let position = off_t(clamping: offset + done)
            let written = try systemCall("pwrite") { pwrite(file.rawValue, source, chunk, position) }
            // A regular file returns 0 only for a 0-byte write; never loop on it.
            guard written > 0 else { throw SystemCallError(call: "pwrite", errno: Errno(rawValue: EIO)) }
            done += UInt64(written)
        }
    }

    /// Guest RAM backed by the memory file at `path`, mapped MAP_PRIVATE as
    /// `layout` says: restore reads only the pages the guest touches, VMs
    /// restored from one file share its page cache, and the guest's writes
    /// go to private copies, never to the file. The file must be a regular
    /// file reaching the end of every region, and must not be truncated
    /// while the VM runs (a mapped page past the end would fault the VMM).
    public convenience init(mappingFile path: String, layout: GuestMemoryFileLayout, trackingDirtyPages: Bool = false) throws(GuestMemoryError) {
        guard !layout.regions.isEmpty else { throw .invalidLayout("the memory file layout has no regions") }
        guard layout.regions.count <= GuestMemoryFileLayout.maximumRegions else {
            throw .invalidLayout("the memory file layout has \(layout.regions.count) regions, more than \(GuestMemoryFileLayout.maximumRegions)")
        }
        for region in layout.regions where region.fileOffset % GuestMemoryFileLayout.fileAlignment != 0 {
            throw .invalidLayout("region at \(region.start) starts at file offset \(region.fileOffset), not a multiple of \(GuestMemoryFileLayout.fileAlignment)")
        }
        guard let needed = layout.requiredFileSize else {
            throw .invalidLayout("a region's file offset plus size wraps past 2^64")
        }
        let file: OwnedFileDescriptor
        let status: stat
        do {
            // O_NONBLOCK: opening a FIFO with no writer would otherwise hang here.
            file = try OwnedFileDescriptor.open(path, flags: O_RDONLY | O_NONBLOCK)
            status = try file.status()
        } catch {
            throw .memoryFile(path: path, cause: error)
        }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw .memoryFileNotRegular(path: path, kind: fileKindName(mode: status.st_mode))
        }
        let size = UInt64(max(status.st_size, 0))
        guard size >= needed else { throw .memoryFileTooSmall(path: path, size: size, needed: needed) }
        try self.init(layout: layout.regions.map { (start: $0.start, size: $0.size, fileOffset: $0.fileOffset) }, trackingDirtyPages: trackingDirtyPages) {
            (range, byteCount) throws(SystemCallError) -> MemoryMapping in
            try MemoryMapping(privateFile: file, size: byteCount, offset: range.fileOffset)
        }
    }
}
