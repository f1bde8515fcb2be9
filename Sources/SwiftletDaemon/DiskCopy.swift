import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Copies a disk image for a clone. swiftlet-vmm's block device reads raw
/// images only (no qcow2 or other overlay with a backing file), so a clone
/// gets a file of its own: a reflink (FICLONE: the file systems that share
/// extents, btrfs and XFS with reflink, copy in no time and no space until
/// either side writes), else a block copy that leaves all-zero blocks as
/// holes, after checking that the copy fits in the free space.
enum DiskCopy {
    enum Method: String, Sendable { case reflink, copy }

    enum Failure: Error, CustomStringConvertible {
        case step(String, path: String, errno: Int32)
        case noSpace(path: String, needed: UInt64, free: UInt64)

        var description: String {
            switch self {
            case .step(let step, let path, let code): "\(step) '\(path)': \(String(cString: strerror(code)))"
            case .noSpace(let path, let needed, let free):
                "copying to '\(path)' needs \(needed) bytes and its file system has \(free) free; free some space, or keep images on a file system with reflinks (btrfs, XFS)"
            }
        }
    }

    /// `_IOW(0x94, 9, int)`, linux/fs.h.
    static let ficlone: UInt = 0x4004_9409
    static let blockSize = 1 << 20

    /// Creates `target` (it must not exist) as a copy of `source`, mode
    /// 0600. `progress` gets (bytes done, total) about every 1 GiB of a block copy.
    @discardableResult
    static func copy(from source: String, to target: String, progress: ((UInt64, UInt64) -> Void)? = nil) throws(Failure) -> Method {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw .step("opening", path: source, errno: errno) }
        defer { close(input) }
        var status = stat()
        guard fstat(input, &status) == 0 else { throw .step("inspecting", path: source, errno: errno) }
        let size = UInt64(max(0, status.st_size))
        let output = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw .step("creating", path: target, errno: errno) }
        var done = false
        defer {
            close(output)
            if !done { unlink(target) }
        }
        if ioctl(output, ficlone, input) == 0 {
            done = true
            return .reflink
        }
        // Not supported here (EOPNOTSUPP, EXDEV, EINVAL): copy the blocks.
        var space = statvfs()
        if fstatvfs(output, &space) == 0 {
            let free = UInt64(space.f_bavail) * UInt64(space.f_frsize)
            // Allocated blocks, not the apparent size: a sparse image copies sparse.
            let needed = min(size, UInt64(max(0, status.st_blocks)) * 512)
            guard needed <= free else { throw .noSpace(path: target, needed: needed, free: free) }
        }
        guard ftruncate(output, off_t(size)) == 0 else { throw .step("sizing", path: target, errno: errno) }
        var buffer = [UInt8](repeating: 0, count: blockSize)
        var offset: UInt64 = 0
        var reported: UInt64 = 0
        while offset < size {
            let count = buffer.withUnsafeMutableBytes { pread(input, $0.baseAddress, blockSize, off_t(offset)) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .step("reading", path: source, errno: errno)
            }
            if count == 0 { break }
            // The target was sized with ftruncate: zeroes need no write.
            if buffer[0..<count].contains(where: { $0 != 0 }) {
                var written = 0
                while written < count {
                    let result = buffer.withUnsafeBytes { bytes -> Int in
                        guard let base = bytes.baseAddress else { errno = EINVAL; return -1 }
                        return pwrite(output, base + written, count - written, off_t(offset) + off_t(written))
                    }
                    if result < 0 {
                        if errno == EINTR { continue }
                        throw .step("writing", path: target, errno: errno)
                    }
                    written += result
                }
            }
            offset += UInt64(count)
            if offset - reported >= 1 << 30 {
                reported = offset
                progress?(offset, size)
            }
        }
        guard fsync(output) == 0 else { throw .step("flushing", path: target, errno: errno) }
        done = true
        return .copy
    }
}
