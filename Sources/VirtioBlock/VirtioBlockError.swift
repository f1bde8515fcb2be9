import Glibc
import GuestMemory
import HostSystem
import QCOW2

/// Why a disk cannot be attached. Raised before the guest starts, so each
/// case names the image and what would be valid.
public enum VirtioBlockError: Error, Equatable, Sendable, CustomStringConvertible {
    /// open(2) refused the image.
    case open(path: String, readOnly: Bool, directIO: Bool, cause: SystemCallError)
    /// fstat or lseek on the open image failed.
    case inspect(path: String, cause: SystemCallError)
    /// A directory, socket, FIFO...: only regular files and block devices hold sectors.
    case notADiskImage(path: String, kind: String)
    /// The image's size is not a whole number of 512-byte sectors.
    case invalidSize(path: String, size: UInt64)
    /// A disk id GET_ID cannot return: empty, longer than 20 bytes, or with
    /// characters other than letters, digits, '-', '_', '.'.
    case invalidIdentifier(String)
    /// Two disks on one image, at least one of them writable.
    case sameImage(path: String, otherPath: String)
    /// Another open file description (another VMM) holds a conflicting lock on the image.
    case locked(path: String, readOnly: Bool)
    /// fcntl(F_OFD_SETLK) failed for another reason than a conflict.
    case lock(path: String, cause: SystemCallError)
    /// A replacement image opened with other flags than the disk it replaces
    /// (read-only is a feature the driver negotiated and cannot change).
    case replacementMismatch(path: String, reason: String)
    /// The qcow2 image could not be opened (corrupt, unsupported feature, backing file...).
    case qcow2(path: String, cause: QCOW2Error)
    /// O_DIRECT asked for a format whose engine does unaligned metadata I/O.
    case directIOUnsupported(path: String, format: String)

    public var description: String {
        switch self {
        case let .open(path, readOnly, directIO, cause):
            switch cause.errno.rawValue {
            case ENOENT:
                "disk image '\(path)' does not exist"
            case EACCES:
                "disk image '\(path)' is not \(readOnly ? "readable" : "readable and writable") (permission denied)\(readOnly ? "" : "; add readonly=on to attach it read-only")"
            case EISDIR:
                "disk image '\(path)' is a directory: expected a raw image file"
            case EROFS:
                "disk image '\(path)' is on a read-only file system: add readonly=on"
            case EINVAL where directIO:
                "disk image '\(path)' cannot be opened with O_DIRECT (its file system does not support it): use direct=off"
            default:
                "cannot open disk image '\(path)': \(cause.errno)"
            }
        case let .inspect(path, cause):
            "cannot inspect disk image '\(path)': \(cause)"
        case let .notADiskImage(path, kind):
            "disk image '\(path)' is \(kind): expected a raw image file or a block device"
        case let .invalidSize(path, size):
            "disk image '\(path)' is \(size) bytes: expected a multiple of 512 (truncate -s to round it)"
        case let .invalidIdentifier(id):
            "invalid disk id '\(id)': expected 1 to 20 letters, digits, '-', '_' or '.'"
        case let .sameImage(path, otherPath):
            "disk image '\(path)' is already attached as '\(otherPath)': attach an image once, or every time with readonly=on"
        case let .locked(path, readOnly):
            readOnly
                ? "disk image '\(path)' is locked: another process holds it open writable (another VMM?); stop it, or attach the image read-only everywhere"
                : "disk image '\(path)' is locked: another process holds it open (another VMM?); stop it, or attach the image read-only everywhere"
        case let .lock(path, cause):
            "cannot lock disk image '\(path)': \(cause)"
        case let .replacementMismatch(path, reason):
            "disk image '\(path)' cannot replace the current one: \(reason)"
        case let .qcow2(path, cause):
            "disk image '\(path)': \(cause)"
        case let .directIOUnsupported(path, format):
            "disk image '\(path)' is \(format): direct=on (O_DIRECT) is only supported for raw images"
        }
    }
}

/// Why one request fails. The guest's doing (or the host file's), never
/// fatal: the device completes the request with `status` and carries on.
public enum BlockRequestError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Fewer than 16 device-readable bytes: no complete header.
    case headerTooShort(length: UInt64)
    /// IN/OUT data not a whole number of sectors.
    case dataNotSectorMultiple(type: UInt32, length: UInt64)
    /// The sectors addressed run past the end of the disk (or past 2^64).
    case sectorRangeOutOfBounds(sector: UInt64, sectors: UInt64, capacity: UInt64)
    /// Device-readable data where the request type has none (e.g. IN).
    case unexpectedReadableData(type: UInt32, length: UInt64)
    /// Device-writable bytes beyond the status byte where the type writes none (e.g. OUT).
    case unexpectedWritableData(type: UInt32, length: UInt64)
    /// A write, discard or write-zeroes on a read-only disk.
    case readOnly(type: UInt32)
    /// GET_ID with room for fewer than 20 bytes.
    case identifierBufferTooShort(length: UInt64)
    /// A discard/write-zeroes segment list that is empty or not whole segments.
    case invalidSegmentList(type: UInt32, length: UInt64)
    case tooManySegments(type: UInt32, count: UInt64, maximum: UInt32)
    case segmentTooLarge(type: UInt32, sectors: UInt32, maximum: UInt32)
    /// Flags this device does not know, or unmap on a discard (5.2.6.1).
    case unsupportedFlags(type: UInt32, flags: UInt32)
    /// A type this device does not implement or the driver did not negotiate.
    case unsupportedType(UInt32)
    /// A guest buffer the queue validated could not be reached (a bug).
    case memory(GuestMemoryError)
    /// The host file failed the operation (EIO, ENOSPC, a file truncated underneath...).
    case host(operation: String, cause: SystemCallError)
    /// A read ran into the end of a file that shrank after it was opened.
    case unexpectedEndOfFile(offset: UInt64)
    /// The qcow2 engine failed the request (host I/O, or a corrupt table met at run time).
    case qcow2(QCOW2Error)
    /// A write of the qcow2 magic to sector 0 of an image probed as raw.
    case probedFormatChange(path: String)

    /// The status byte this failure completes the request with.
    public var status: UInt8 {
        switch self {
        case .unsupportedFlags, .unsupportedType: BlockStatus.unsupported
        default: BlockStatus.ioError
        }
    }

    public var description: String {
        switch self {
        case let .headerTooShort(length):
            "request header is \(length) bytes, expected 16"
        case let .dataNotSectorMultiple(type, length):
            "\(BlockRequestType.name(type)) of \(length) bytes is not a multiple of 512"
        case let .sectorRangeOutOfBounds(sector, sectors, capacity):
            "\(sectors) sectors at sector \(sector) are beyond the disk's \(capacity) sectors"
        case let .unexpectedReadableData(type, length):
            "\(BlockRequestType.name(type)) carries \(length) unexpected device-readable bytes"
        case let .unexpectedWritableData(type, length):
            "\(BlockRequestType.name(type)) has \(length) unexpected device-writable bytes before its status"
        case let .readOnly(type):
            "\(BlockRequestType.name(type)) on a read-only disk"
        case let .identifierBufferTooShort(length):
            "GET_ID buffer of \(length) bytes, expected at least 20"
        case let .invalidSegmentList(type, length):
            "\(BlockRequestType.name(type)) segment list of \(length) bytes is not a non-zero multiple of 16"
        case let .tooManySegments(type, count, maximum):
            "\(BlockRequestType.name(type)) with \(count) segments, at most \(maximum) allowed"
        case let .segmentTooLarge(type, sectors, maximum):
            "\(BlockRequestType.name(type)) segment of \(sectors) sectors, at most \(maximum) allowed"
        case let .unsupportedFlags(type, flags):
            "\(BlockRequestType.name(type)) with unsupported flags 0x\(String(flags, radix: 16))"
        case let .unsupportedType(type):
            "unsupported request \(BlockRequestType.name(type))"
        case let .memory(error):
            "guest memory: \(error)"
        case let .host(operation, cause):
            "\(operation): \(cause)"
        case let .unexpectedEndOfFile(offset):
            "the image ends before offset \(offset) (was it truncated?)"
        case let .qcow2(error):
            "\(error)"
        case let .probedFormatChange(path):
            "refused a write of a qcow2 header to sector 0 of '\(path)', whose format was probed as raw (attach it with format=raw to allow it)"
        }
    }
}
