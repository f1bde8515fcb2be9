import Glibc

/// Why a file named by a user or API caller was not read.
public enum RegularFileError: Error, Equatable, Sendable, CustomStringConvertible {
    /// open(2) or fstat(2) failed.
    case open(SystemCallError)
    /// A FIFO, device, directory or socket: reading one could block or never end.
    case notARegularFile(kind: String)
    /// Larger than the caller's cap.
    case tooLarge(size: UInt64, maximum: UInt64)
    /// read(2) failed.
    case read(SystemCallError)

    public var description: String {
        switch self {
        case let .open(cause): "\(cause)"
        case let .notARegularFile(kind): "it is \(kind), not a regular file"
        case let .tooLarge(size, maximum): "it is \(size) bytes, more than the \(maximum) allowed"
        case let .read(cause): "\(cause)"
        }
    }

    /// The errno behind an open or read failure.
    public var errno: Errno? {
        switch self {
        case let .open(cause), let .read(cause): cause.errno
        case .notARegularFile, .tooLarge: nil
        }
    }
}

/// What kind of file an `st_mode` describes, for messages.
public func fileKindName(mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFREG: "a regular file"
    case S_IFDIR: "a directory"
    case S_IFCHR: "a character device"
    case S_IFBLK: "a block device"
    case S_IFIFO: "a FIFO"
    case S_IFSOCK: "a socket"
    default: "a special file"
    }
}

extension OwnedFileDescriptor {
    /// Opens `path` for reading without ever blocking in open(2) (O_NONBLOCK:
    /// a FIFO with no writer would otherwise hang the caller's thread), and
    /// refuses anything but a regular file no larger than `maximumSize`.
    /// Returns the descriptor and the file's size.
    public static func openRegularFile(_ path: String, maximumSize: UInt64) throws(RegularFileError) -> (OwnedFileDescriptor, UInt64) {
        let file: OwnedFileDescriptor
        let status: stat
        do {
            file = try OwnedFileDescriptor.open(path, flags: O_RDONLY | O_NONBLOCK)
            status = try file.status()
        } catch {
            throw .open(error)
        }
        guard status.st_mode & S_IFMT == S_IFREG else { throw .notARegularFile(kind: fileKindName(mode: status.st_mode)) }
        let size = UInt64(max(status.st_size, 0))
        guard size <= maximumSize else { throw .tooLarge(size: size, maximum: maximumSize) }
        return (file, size)
    }

    /// Reads a whole regular file of at most `maximumSize` bytes (see
    /// `openRegularFile`). A file that grows while read is cut at the size
    /// it had when opened, so the allocation stays bounded.
    public static func readRegularFile(_ path: String, maximumSize: UInt64) throws(RegularFileError) -> [UInt8] {
        let (file, size) = try openRegularFile(path, maximumSize: maximumSize)
        var bytes = [UInt8](repeating: 0, count: Int(size))
        var offset = 0
        while offset < bytes.count {
            // SAFETY: the slice stays within `bytes`, alive for the call.
            let result = bytes.withUnsafeMutableBytes { raw in
                Result { () throws(SystemCallError) in
                    try file.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[offset...]), atOffset: Int64(offset))
                }
            }
            let count: Int
            do {
                count = try result.get()
            } catch {
                throw .read(error)
            }
            if count == 0 { break }
            offset += count
        }
        return offset == bytes.count ? bytes : Array(bytes[..<offset])
    }
}
