import HostSystem

/// Why a qcow2 image could not be opened, created, read or written. Each case
/// names the step that failed; structural cases come from the image's bytes
/// and never from a bug, so none of them is fatal to the process.
public enum QCOW2Error: Error, Equatable, Sendable, CustomStringConvertible {
    /// open(2) refused the image or a backing file.
    case open(path: String, cause: SystemCallError)
    /// fstat(2) on the open image failed.
    case inspect(path: String, cause: SystemCallError)
    /// pread failed.
    case read(path: String, offset: UInt64, cause: SystemCallError)
    /// pwrite (or ftruncate while creating) failed.
    case write(path: String, offset: UInt64, cause: SystemCallError)
    /// fdatasync failed: writes since the last flush may be lost.
    case flush(path: String, cause: SystemCallError)
    /// The file ends before metadata that must be there (a truncated image).
    case truncated(path: String, offset: UInt64, length: UInt64)
    /// The first four bytes are not "QFI\xfb".
    case badMagic(path: String)
    /// Only versions 2 and 3 exist.
    case unsupportedVersion(path: String, version: UInt32)
    /// A header field out of its valid range.
    case invalidHeader(path: String, reason: String)
    /// Incompatible feature bits this reader does not know: opening would misread the image.
    case unknownIncompatibleFeatures(path: String, bits: UInt64)
    /// A feature the image uses that this engine refuses (encryption,
    /// extended L2 entries, an external data file; internal snapshots or
    /// shared tables for writing).
    case unsupportedFeature(path: String, feature: String)
    /// The corrupt bit is set: QEMU found an inconsistency; writing could make it worse.
    case markedCorrupt(path: String)
    /// The dirty bit of a lazy-refcounts image is set: its refcounts are stale.
    case dirty(path: String)
    /// Compressed clusters in something other than zlib (e.g. zstd).
    case unsupportedCompressionType(path: String, type: UInt8)
    /// An L1 or refcount table larger than QEMU itself accepts.
    case tableTooLarge(path: String, table: String, bytes: UInt64, maximum: UInt64)
    /// The L1 table cannot map the whole virtual size.
    case l1TooSmall(path: String, entries: UInt32, needed: UInt64)
    /// Metadata placed (partly) past the end of the file.
    case beyondEndOfFile(path: String, what: String, offset: UInt64, length: UInt64, fileSize: UInt64)
    /// Metadata not on a cluster boundary.
    case misaligned(path: String, what: String, offset: UInt64)
    /// Two metadata structures share clusters.
    case overlappingMetadata(path: String, what: String, other: String)
    /// An L2 entry that cannot be right: misaligned, or pointing into metadata.
    /// The request fails; nothing is written.
    case invalidL2Entry(path: String, guestOffset: UInt64, entry: UInt64, reason: String)
    /// A refcount that would go below zero or above its width.
    case invalidRefcount(path: String, cluster: UInt64, reason: String)
    /// The refcount table has no room for another refcount block.
    case refcountTableFull(path: String)
    /// A compressed cluster's data does not inflate to a whole cluster.
    case decompression(path: String, guestOffset: UInt64)
    /// A request beyond the virtual disk.
    case outOfRange(path: String, offset: UInt64, length: UInt64, size: UInt64)
    /// A write, discard or write-zeroes on an image opened read-only.
    case readOnly(path: String)
    /// The backing file could not be opened or read.
    indirect case backingFile(path: String, backingPath: String, cause: QCOW2Error)
    /// Another open file description holds the backing file open writable (another VMM?).
    case backingFileLocked(path: String, backingPath: String)
    /// A backing-file format other than raw or qcow2.
    case unknownBackingFormat(path: String, format: String)
    /// More backing files chained than allowed (or a loop).
    case backingChainTooDeep(path: String, maximum: Int)
    /// `create` was asked for something it cannot make.
    case invalidCreateOptions(path: String, reason: String)

    public var description: String {
        switch self {
        case let .open(path, cause): "cannot open qcow2 image '\(path)': \(cause)"
        case let .inspect(path, cause): "cannot inspect qcow2 image '\(path)': \(cause)"
        case let .read(path, offset, cause): "reading qcow2 image '\(path)' at byte \(offset): \(cause)"
        case let .write(path, offset, cause): "writing qcow2 image '\(path)' at byte \(offset): \(cause)"
        case let .flush(path, cause): "flushing qcow2 image '\(path)': \(cause)"
        case let .truncated(path, offset, length):
            "qcow2 image '\(path)' is truncated: \(length) bytes at \(offset) are past its end"
        case let .badMagic(path): "'\(path)' is not a qcow2 image (bad magic)"
        case let .unsupportedVersion(path, version): "qcow2 image '\(path)' has version \(version): expected 2 or 3"
        case let .invalidHeader(path, reason): "qcow2 image '\(path)' has an invalid header: \(reason)"
        case let .unknownIncompatibleFeatures(path, bits):
            "qcow2 image '\(path)' uses unknown incompatible features 0x\(String(bits, radix: 16))"
        case let .unsupportedFeature(path, feature): "qcow2 image '\(path)' uses \(feature), which Swiftlet does not support"
        case let .markedCorrupt(path):
            "qcow2 image '\(path)' is marked corrupt: repair it with qemu-img check -r all, or attach it read-only"
        case let .dirty(path):
            "qcow2 image '\(path)' has lazy refcounts and was not closed cleanly: repair it with qemu-img check -r all, or attach it read-only"
        case let .unsupportedCompressionType(path, type):
            "qcow2 image '\(path)' uses compression type \(type): only zlib (0) is supported"
        case let .tableTooLarge(path, table, bytes, maximum):
            "qcow2 image '\(path)' has a \(bytes)-byte \(table), more than the \(maximum) allowed"
        case let .l1TooSmall(path, entries, needed):
            "qcow2 image '\(path)' has \(entries) L1 entries, its virtual size needs \(needed)"
        case let .beyondEndOfFile(path, what, offset, length, fileSize):
            "qcow2 image '\(path)' is corrupt: its \(what) (\(length) bytes at \(offset)) lies beyond its end (\(fileSize) bytes)"
        case let .misaligned(path, what, offset):
            "qcow2 image '\(path)' is corrupt: its \(what) at \(offset) is not cluster-aligned"
        case let .overlappingMetadata(path, what, other):
            "qcow2 image '\(path)' is corrupt: its \(what) overlaps its \(other)"
        case let .invalidL2Entry(path, guestOffset, entry, reason):
            "qcow2 image '\(path)' is corrupt: the L2 entry 0x\(String(entry, radix: 16)) for guest offset \(guestOffset) \(reason)"
        case let .invalidRefcount(path, cluster, reason):
            "qcow2 image '\(path)' is corrupt: the refcount of cluster \(cluster) \(reason)"
        case let .refcountTableFull(path): "qcow2 image '\(path)' has no room left in its refcount table"
        case let .decompression(path, guestOffset):
            "qcow2 image '\(path)' is corrupt: the compressed cluster at guest offset \(guestOffset) does not inflate"
        case let .outOfRange(path, offset, length, size):
            "\(length) bytes at \(offset) are beyond the \(size)-byte virtual disk of '\(path)'"
        case let .readOnly(path): "qcow2 image '\(path)' is open read-only"
        case let .backingFile(path, backingPath, cause): "backing file '\(backingPath)' of '\(path)': \(cause)"
        case let .backingFileLocked(path, backingPath):
            "backing file '\(backingPath)' of '\(path)' is locked: another process (another VMM?) has it open writable"
        case let .unknownBackingFormat(path, format):
            "qcow2 image '\(path)' names backing format '\(format)': expected raw or qcow2"
        case let .backingChainTooDeep(path, maximum):
            "qcow2 image '\(path)' has more than \(maximum) backing files (a loop?)"
        case let .invalidCreateOptions(path, reason): "cannot create qcow2 image '\(path)': \(reason)"
        }
    }
}
