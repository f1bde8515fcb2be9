import CKVM
import Glibc
import GuestMemory
import HostSystem
import QCOW2
import Synchronization
import Virtio

/// How an image file's bytes map to the guest's disk.
public enum DiskFormat: String, Sendable, CaseIterable {
    /// The file is the disk, byte for byte.
    case raw
    /// QEMU's copy-on-write format (docs/virtio-blk.md, "Disk formats").
    case qcow2
}

/// A disk image (raw file, block device, or qcow2 file) the device reads and
/// writes at byte offsets. Raw: guest buffers are handed to preadv/pwritev
/// directly; with O_DIRECT, requests whose buffers are not 512-byte aligned go
/// through a bounce buffer. qcow2: each buffer goes through the QCOW2 engine.
public final class DiskImage: Sendable {
    public let path: String
    /// Bytes; always a multiple of 512 (a qcow2 image's virtual size, rounded
    /// down). Zero is a valid placeholder (a disk of capacity 0 that
    /// `PATCH /drives` later points at a real image).
    public let size: UInt64
    public let format: DiskFormat
    /// Raw because the probe found no qcow2 magic, not because the caller said
    /// so: writes that would put the magic into sector 0 are refused, as QEMU
    /// does, so that a guest cannot turn its disk into a qcow2 image that
    /// names a host file as its backing file at the next probe.
    let probedRaw: Bool
    /// The qcow2 engine, for a qcow2 image.
    let qcow2: QCOW2Image?
    public let readOnly: Bool
    public let directIO: Bool
    /// The host file system's block size (st_blksize), at least 512.
    public let preferredBlockSize: UInt64
    /// The file's device and inode, to catch one image attached twice.
    public let fileIdentity: FileIdentity
    /// st_rdev (non-zero for a block device), part of the derived serial.
    let specialDevice: UInt64
    let file: OwnedFileDescriptor
    /// The descriptor whose open file description holds this image's OFD
    /// lock (nil until locked): `file`, or, after `PATCH /drives` to the
    /// same file, the replaced image's, kept open so the lock never lapses.
    let lockHolder: Mutex<OwnedFileDescriptor?>
    /// Page-aligned scratch space for O_DIRECT transfers of unaligned guest
    /// buffers, and zeroes for write-zeroes without fallocate support.
    /// Locked only by the device's worker thread, so never contended.
    let scratch: Mutex<MemoryMapping?>

    /// O_DIRECT's value on x86_64 and arm64 Linux; Glibc only exports it with _GNU_SOURCE.
    static let openDirectFlag: Int32 = 0o40000
    /// O_DIRECT wants memory, offsets and lengths aligned to the logical block size.
    static let directAlignment = 512
    static let scratchSize = 1 << 20
    /// Vectors per preadv/pwritev call (the kernel's UIO_MAXIOV).
    static let maximumVectors = 1024

    public var capacityInSectors: UInt64 { size / BlockLimits.sectorSize }

    /// Opens `path` (O_RDONLY for a read-only disk, else O_RDWR; O_CLOEXEC; O_DIRECT
    /// if asked), checks that it holds a whole number of sectors (raw) or a
    /// valid qcow2 image and, unless `lockNow` is false (the caller then calls
    /// `acquireLock`), locks it against other processes. A nil `format`
    /// probes: qcow2 if the file starts with the qcow2 magic, else raw. Images
    /// a guest writes must be given their format (a guest could write a
    /// qcow2 header into a raw image and name a host file as its backing file).
    public init(path: String, readOnly: Bool = false, directIO: Bool = false, format: DiskFormat? = nil,
                lockNow: Bool = true) throws(VirtioBlockError) {
        // O_NONBLOCK so that a FIFO named by an API caller cannot hang open(2); cleared below.
        let flags = (readOnly ? O_RDONLY : O_RDWR) | (directIO ? Self.openDirectFlag : 0) | O_NONBLOCK
        let file: OwnedFileDescriptor
        do {
            file = try OwnedFileDescriptor.open(path, flags: flags)
        } catch {
            throw .open(path: path, readOnly: readOnly, directIO: directIO, cause: error)
        }
        let status: stat
        do {
            status = try file.status()
        } catch {
            throw .inspect(path: path, cause: error)
        }
        let size: UInt64
        switch status.st_mode & S_IFMT {
        case S_IFREG:
            size = UInt64(max(status.st_size, 0))
        case S_IFBLK:
            // A block device's st_size is 0; its end is where lseek stops.
            do {
                let end = try systemCall("lseek \(path) SEEK_END") { lseek(file.rawValue, 0, SEEK_END) }
                size = UInt64(max(end, 0))
            } catch {
                throw .inspect(path: path, cause: error)
            }
        case S_IFDIR: throw .notADiskImage(path: path, kind: "a directory")
        case S_IFCHR: throw .notADiskImage(path: path, kind: "a character device")
        case S_IFIFO: throw .notADiskImage(path: path, kind: "a FIFO")
        case S_IFSOCK: throw .notADiskImage(path: path, kind: "a socket")
        default: throw .notADiskImage(path: path, kind: "not a regular file")
        }
        do {
            let status = try systemCall("fcntl F_GETFL") { fcntl(file.rawValue, F_GETFL) }
            _ = try systemCall("fcntl F_SETFL") { fcntl(file.rawValue, F_SETFL, status & ~O_NONBLOCK) }
        } catch {
            throw .inspect(path: path, cause: error)
        }
        let isQCOW2 = switch format {
        case .raw: false
        case .qcow2: true
        case nil: Self.startsWithQCOW2Magic(file, directIO: directIO)
        }
        if isQCOW2 {
            // The engine's table and metadata I/O is not sector-aligned.
            guard !directIO else { throw .directIOUnsupported(path: path, format: DiskFormat.qcow2.rawValue) }
            let image: QCOW2Image
            do {
                image = try QCOW2Image(file: file, path: path, readOnly: readOnly)
            } catch {
                throw .qcow2(path: path, cause: error)
            }
            qcow2 = image
            probedRaw = false
            self.format = .qcow2
            self.size = image.virtualSize / BlockLimits.sectorSize * BlockLimits.sectorSize
        } else {
            guard size % BlockLimits.sectorSize == 0 else { throw .invalidSize(path: path, size: size) }
            qcow2 = nil
            self.format = .raw
            self.size = size
            probedRaw = format == nil
        }
        self.path = path
        self.readOnly = readOnly
        self.directIO = directIO
        let blockSize = UInt64(max(status.st_blksize, 512))
        preferredBlockSize = blockSize % BlockLimits.sectorSize == 0 ? blockSize : BlockLimits.sectorSize
        self.file = file
        fileIdentity = FileIdentity(device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
        specialDevice = UInt64(status.st_rdev)
        scratch = Mutex(nil)
        lockHolder = Mutex(nil)
        if lockNow { try acquireLock() }
    }

    /// Takes an OFD lock on the whole image: shared for a read-only disk,
    /// exclusive for a writable one, so that a second VMM cannot write an
    /// image this one uses, nor attach writable one that this VMM reads.
    /// Held until the image is released. OFD rather than POSIX locks: those
    /// belong to the process, would not conflict between two opens in one
    /// VMM, and would be dropped by closing any descriptor of the file.
    /// `previous` (the image a drive had) on the same file, opened the same
    /// way, hands over its lock, which a new lock would conflict with.
    public func acquireLock(replacing previous: DiskImage? = nil) throws(VirtioBlockError) {
        if let previous, previous.fileIdentity == fileIdentity, previous.readOnly == readOnly,
           let inherited = previous.lockHolder.withLock({ $0 }) {
            lockHolder.withLock { $0 = inherited }
            return
        }
        let locked: Bool
        do {
            locked = try file.tryLockWholeFile(readOnly ? .shared : .exclusive)
        } catch {
            throw .lock(path: path, cause: error)
        }
        guard locked else { throw .locked(path: path, readOnly: readOnly) }
        lockHolder.withLock { $0 = file }
    }

    /// The probe: the first four bytes are "QFI\xfb". Read through an
    /// aligned page with O_DIRECT; an unreadable file probes as raw.
    static func startsWithQCOW2Magic(_ file: OwnedFileDescriptor, directIO: Bool) -> Bool {
        guard directIO else { return QCOW2Image.hasMagic(file) }
        guard let page = try? MemoryMapping(anonymousSize: 4096) else { return false }
        let count = (try? systemCall("pread") { pread(file.rawValue, page.address, 4096, 0) }) ?? 0
        guard count >= 4 else { return false }
        // SAFETY: the page holds at least 4 bytes just read.
        let bytes = (0..<4).map { page.address.load(fromByteOffset: $0, as: UInt8.self) }
        return bytes == [0x51, 0x46, 0x49, 0xfb]
    }

    public struct FileIdentity: Hashable, Sendable {
        public let device: UInt64
        public let inode: UInt64
    }

    /// The GET_ID serial Firecracker gives a drive: st_dev, st_rdev and st_ino
    /// in decimal, concatenated and cut to 20 bytes. The same image (file)
    /// always gets the same serial; a different file gets another.
    public var derivedSerial: String {
        String("\(fileIdentity.device)\(specialDevice)\(fileIdentity.inode)".prefix(BlockLimits.identifierSize))
    }

    /// Refuses one image attached twice unless every attachment is read-only:
    /// two writers (or a writer and a reader) would each cache and corrupt the other's view.
    public static func checkDistinct(_ disks: [DiskImage]) throws(VirtioBlockError) {
        for (index, disk) in disks.enumerated() {
            for other in disks[..<index] where other.fileIdentity == disk.fileIdentity && !(disk.readOnly && other.readOnly) {
                throw .sameImage(path: disk.path, otherPath: other.path)
            }
        }
    }

    // MARK: Data transfer

    /// Fills `buffers` (in order) from the image starting at byte `offset`.
    func read(at offset: UInt64, into buffers: [GuestBuffer], memory: GuestMemory) throws(BlockRequestError) {
        if let qcow2 {
            try qcow2Transfer(qcow2, offset: offset, buffers: buffers, memory: memory, write: false)
            return
        }
        var vectors = try Self.hostVectors(for: buffers, memory: memory)
        if directIO && !Self.isDirectAligned(vectors) {
            try bounced(vectors, offset: offset, write: false)
        } else {
            try transfer(&vectors, offset: offset, write: false)
        }
    }

    /// Writes `buffers` (in order) to the image starting at byte `offset`.
    func write(at offset: UInt64, from buffers: [GuestBuffer], memory: GuestMemory) throws(BlockRequestError) {
        if let qcow2 {
            try qcow2Transfer(qcow2, offset: offset, buffers: buffers, memory: memory, write: true)
            return
        }
        var vectors = try Self.hostVectors(for: buffers, memory: memory)
        if probedRaw && offset == 0 && Self.startsWithQCOW2Magic(vectors) { throw .probedFormatChange(path: path) }
        if directIO && !Self.isDirectAligned(vectors) {
            try bounced(vectors, offset: offset, write: true)
        } else {
            try transfer(&vectors, offset: offset, write: true)
        }
    }

    /// A qcow2 request: each guest buffer in turn through the engine.
    func qcow2Transfer(_ image: QCOW2Image, offset: UInt64, buffers: [GuestBuffer], memory: GuestMemory, write: Bool) throws(BlockRequestError) {
        var position = offset
        for vector in try Self.hostVectors(for: buffers, memory: memory) {
            guard let base = vector.iov_base else { continue }
            do {
                // SAFETY: the vector is bounds-checked guest memory, mapped for the request.
                if write {
                    try image.write(at: position, from: UnsafeRawBufferPointer(start: base, count: vector.iov_len))
                } else {
                    try image.read(at: position, into: UnsafeMutableRawBufferPointer(start: base, count: vector.iov_len))
                }
            } catch {
                throw .qcow2(error)
            }
            position += UInt64(vector.iov_len)
        }
    }

    /// The host memory behind each guest buffer, empty ones dropped.
    static func hostVectors(for buffers: [GuestBuffer], memory: GuestMemory) throws(BlockRequestError) -> [iovec] {
        var vectors: [iovec] = []
        vectors.reserveCapacity(buffers.count)
        for buffer in buffers where buffer.length > 0 {
            do {
                // SAFETY: the pointer outlives the closure but not the mapping: guest
                // RAM stays mapped while `memory` lives, and the caller holds it for
                // the whole request; the range was bounds-checked by withHostBytes.
                let base = try memory.withHostBytes(at: buffer.address, length: UInt64(buffer.length)) { $0.baseAddress }
                vectors.append(iovec(iov_base: base, iov_len: Int(buffer.length)))
            } catch {
                switch error {
                case let .memory(cause): throw .memory(cause)
                }
            }
        }
        return vectors
    }

    /// Whether data about to be written at offset 0 starts with the qcow2 magic.
    static func startsWithQCOW2Magic(_ vectors: [iovec]) -> Bool {
        var head = [UInt8](repeating: 0, count: 4)
        var cursor = VectorCursor(vectors: vectors)
        guard cursor.remaining >= head.count else { return false }
        // SAFETY: the copy writes head.count bytes into `head`'s storage.
        head.withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress { cursor.copy(count: raw.count, toOrFrom: base, intoVectors: false) }
        }
        return head == [0x51, 0x46, 0x49, 0xfb]
    }

    static func isDirectAligned(_ vectors: [iovec]) -> Bool {
        vectors.allSatisfy { vector in
            Int(bitPattern: vector.iov_base) % directAlignment == 0 && vector.iov_len % directAlignment == 0
        }
    }

    /// preadv/pwritev until every vector is done, at most `maximumVectors` a call.
    func transfer(_ vectors: inout [iovec], offset: UInt64, write: Bool) throws(BlockRequestError) {
        var index = 0
        var position = offset
        let descriptor = file.rawValue
        while index < vectors.count {
            let count = Int32(min(vectors.count - index, Self.maximumVectors))
            let start = index
            // SAFETY: the kernel reads `count` vectors from start..<start+count, inside the array.
            let result = vectors.withUnsafeBufferPointer { table in
                Result { () throws(SystemCallError) -> Int in
                    guard let base = table.baseAddress else { return 0 }
                    return try systemCall(write ? "pwritev" : "preadv") {
                        write ? pwritev(descriptor, base + start, count, off_t(truncatingIfNeeded: position))
                            : preadv(descriptor, base + start, count, off_t(truncatingIfNeeded: position))
                    }
                }
            }
            let done: Int
            do {
                done = try result.get()
            } catch {
                throw .host(operation: "\(write ? "writing" : "reading") at byte \(position) of \(path)", cause: error)
            }
            guard done > 0 else {
                if write { throw .host(operation: "writing at byte \(position) of \(path)", cause: SystemCallError(call: "pwritev", errno: Errno(rawValue: EIO))) }
                throw .unexpectedEndOfFile(offset: position)
            }
            position += UInt64(done)
            // Skip the vectors done; trim a partly done one.
            var left = done
            while left > 0, index < vectors.count {
                if left >= vectors[index].iov_len {
                    left -= vectors[index].iov_len
                    index += 1
                } else {
                    vectors[index].iov_base = vectors[index].iov_base.map { $0 + left }
                    vectors[index].iov_len -= left
                    left = 0
                }
            }
        }
    }

    /// O_DIRECT with unaligned guest buffers: copy through the page-aligned
    /// scratch buffer, a megabyte at a time.
    func bounced(_ vectors: [iovec], offset: UInt64, write: Bool) throws(BlockRequestError) {
        let result = scratch.withLock { scratch in
            Result { () throws(BlockRequestError) in
                let buffer = try Self.scratchBuffer(&scratch)
                var cursor = VectorCursor(vectors: vectors)
                var position = offset
                while cursor.remaining > 0 {
                    let chunk = min(cursor.remaining, Self.scratchSize)
                    // SAFETY: chunk ≤ scratchSize, the mapping's size.
                    var bounce = [iovec(iov_base: buffer.address, iov_len: chunk)]
                    if write {
                        cursor.copy(count: chunk, toOrFrom: buffer.address, intoVectors: false)
                        try transfer(&bounce, offset: position, write: true)
                    } else {
                        try transfer(&bounce, offset: position, write: false)
                        cursor.copy(count: chunk, toOrFrom: buffer.address, intoVectors: true)
                    }
                    position += UInt64(chunk)
                }
            }
        }
        try result.get()
    }

    static func scratchBuffer(_ scratch: inout MemoryMapping?) throws(BlockRequestError) -> MemoryMapping {
        if let existing = scratch { return existing }
        do {
            let mapping = try MemoryMapping(anonymousSize: scratchSize)
            scratch = mapping
            return mapping
        } catch {
            throw .host(operation: "mapping the O_DIRECT bounce buffer", cause: error)
        }
    }

    // MARK: Flush, discard, write zeroes

    /// Makes every completed write durable (fdatasync: the image's size never
    /// changes, so its data is all a later read needs).
    func flush() throws(BlockRequestError) {
        if let qcow2 {
            do { try qcow2.flush() } catch { throw .qcow2(error) }
            return
        }
        do {
            _ = try systemCall("fdatasync") { fdatasync(file.rawValue) }
        } catch {
            throw .host(operation: "flushing \(path)", cause: error)
        }
    }

    /// Makes the file on its own hold every completed write: a qcow2 image's
    /// cached L1/L2 updates are written (in their durable order). A snapshot
    /// calls it, since its restore reopens the file, maybe after this process
    /// was killed. Nothing to do for raw.
    public func persistMetadata() throws(VirtioBlockError) {
        guard let qcow2 else { return }
        do {
            try qcow2.flush()
        } catch {
            throw .qcow2(path: path, cause: error)
        }
    }

    /// Lets the host free `length` bytes at `offset`; they read back as zeroes
    /// where the file system can punch holes. A file system that cannot is no
    /// error: discard is a hint.
    func discard(at offset: UInt64, length: UInt64) throws(BlockRequestError) {
        if let qcow2 {
            do { try qcow2.discard(at: offset, length: length) } catch { throw .qcow2(error) }
            return
        }
        do {
            try fallocate(mode: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset: offset, length: length)
        } catch where Self.isUnsupported(error) {
            return
        } catch {
            throw .host(operation: "discarding \(length) bytes at \(offset) of \(path)", cause: error)
        }
    }

    /// Zeroes `length` bytes at `offset`: ZERO_RANGE (keeps the blocks
    /// allocated) or, with `unmap`, PUNCH_HOLE first; each falls back to the
    /// other, and both to writing zeroes.
    func writeZeroes(at offset: UInt64, length: UInt64, unmap: Bool) throws(BlockRequestError) {
        if let qcow2 {
            // The zero flag both zeroes and unmaps whole clusters.
            do { try qcow2.writeZeroes(at: offset, length: length) } catch { throw .qcow2(error) }
            return
        }
        let modes = unmap
            ? [FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE]
            : [FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE]
        for mode in modes {
            do {
                try fallocate(mode: mode, offset: offset, length: length)
                return
            } catch where Self.isUnsupported(error) {
                continue
            } catch {
                throw .host(operation: "zeroing \(length) bytes at \(offset) of \(path)", cause: error)
            }
        }
        try writeZeroBytes(at: offset, length: length)
    }

    func writeZeroBytes(at offset: UInt64, length: UInt64) throws(BlockRequestError) {
        let result = scratch.withLock { scratch in
            Result { () throws(BlockRequestError) in
                let buffer = try Self.scratchBuffer(&scratch)
                buffer.address.initializeMemory(as: UInt8.self, repeating: 0, count: Self.scratchSize)
                var position = offset
                let end = offset + length
                while position < end {
                    let chunk = Int(min(end - position, UInt64(Self.scratchSize)))
                    var zeroes = [iovec(iov_base: buffer.address, iov_len: chunk)]
                    try transfer(&zeroes, offset: position, write: true)
                    position += UInt64(chunk)
                }
            }
        }
        try result.get()
    }

    func fallocate(mode: Int32, offset: UInt64, length: UInt64) throws(SystemCallError) {
        _ = try systemCall("fallocate") {
            ckvm_fallocate(file.rawValue, mode, Int64(bitPattern: offset), Int64(bitPattern: length))
        }
    }

    static func isUnsupported(_ error: SystemCallError) -> Bool {
        error.errno.rawValue == EOPNOTSUPP || error.errno.rawValue == ENOSYS
    }
}

/// Walks a list of host vectors, copying to or from a flat buffer.
struct VectorCursor {
    var vectors: [iovec]
    var index = 0
    var offsetInVector = 0
    private(set) var remaining: Int

    init(vectors: [iovec]) {
        self.vectors = vectors
        remaining = vectors.reduce(0) { $0 + $1.iov_len }
    }

    /// Copies `count` bytes between the next vectors and `flat`, advancing.
    mutating func copy(count: Int, toOrFrom flat: UnsafeMutableRawPointer, intoVectors: Bool) {
        var done = 0
        while done < count, index < vectors.count {
            let vector = vectors[index]
            let step = min(vector.iov_len - offsetInVector, count - done)
            if let base = vector.iov_base {
                // SAFETY: step stays within this vector (bounds-checked guest memory)
                // and within flat's `count` bytes.
                if intoVectors {
                    (base + offsetInVector).copyMemory(from: flat + done, byteCount: step)
                } else {
                    (flat + done).copyMemory(from: base + offsetInVector, byteCount: step)
                }
            }
            done += step
            offsetInVector += step
            if offsetInVector == vector.iov_len {
                index += 1
                offsetInVector = 0
            }
        }
        remaining -= done
    }
}
