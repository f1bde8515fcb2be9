import HostSystem

/// Why the page-fault handler stopped, one case per step.
public enum UffdHandlerError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The command line is not `SOCKET MEMORY_FILE`.
    case usage(String)
    /// Opening, checking or mapping the memory file failed.
    case memoryFile(path: String, cause: SystemCallError)
    /// The memory file is empty, a directory, a FIFO...
    case memoryFileUnusable(path: String, reason: String)
    /// Binding or listening on the socket failed (EADDRINUSE: the path exists).
    case listen(path: String, cause: SystemCallError)
    /// Accepting the VMM's connection failed.
    case accept(path: String, cause: SystemCallError)
    /// Reading the VMM's message failed.
    case receive(cause: SystemCallError)
    /// The VMM sent nothing usable before `seconds` passed or it hung up.
    case noMessage(reason: String)
    /// The message came without a userfaultfd attached.
    case noDescriptor(bytes: Int)
    /// The message is not the mappings JSON Firecracker sends.
    case malformedMappings(String)
    /// A mapping reads past the end of the memory file.
    case mappingOutsideFile(index: Int, offset: UInt64, size: UInt64, fileSize: UInt64)
    /// Waiting for events (poll) failed.
    case poll(cause: SystemCallError)
    /// Reading an event from the userfaultfd failed.
    case readEvent(cause: SystemCallError)
    /// Filling a page (UFFDIO_COPY / UFFDIO_ZEROPAGE) failed.
    case resolve(address: UInt64, cause: SystemCallError)

    public var description: String {
        switch self {
        case let .usage(reason): "usage: swiftlet-uffd-handler SOCKET MEMORY_FILE (\(reason))"
        case let .memoryFile(path, cause): "memory file \(path): \(cause)"
        case let .memoryFileUnusable(path, reason): "memory file \(path) \(reason)"
        case let .listen(path, cause): "listening on \(path): \(cause)"
        case let .accept(path, cause): "accepting the VMM on \(path): \(cause)"
        case let .receive(cause): "receiving the VMM's mappings: \(cause)"
        case let .noMessage(reason): "no mappings from the VMM: \(reason)"
        case let .noDescriptor(bytes): "the VMM's message (\(bytes) bytes) carried no userfaultfd (SCM_RIGHTS)"
        case let .malformedMappings(reason): "malformed mappings message: \(reason)"
        case let .mappingOutsideFile(index, offset, size, fileSize):
            "mapping \(index) (\(size) bytes at file offset \(offset)) ends past the memory file's \(fileSize) bytes"
        case let .poll(cause): "waiting for events: \(cause)"
        case let .readEvent(cause): "reading a userfaultfd event: \(cause)"
        case let .resolve(address, cause): "filling the page at 0x\(String(address, radix: 16)): \(cause)"
        }
    }
}
