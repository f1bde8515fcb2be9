import CKVM
import Glibc

/// One event read from a userfaultfd (`struct uffd_msg`).
public enum UserfaultEvent: Equatable, Sendable {
    /// A thread touched a missing page at `address` (not page aligned);
    /// `flags` are UFFD_PAGEFAULT_FLAG_* (write, write-protect, minor).
    case pageFault(address: UInt64, flags: UInt64)
    /// [start, end) was madvise'd away (MADV_DONTNEED/REMOVE): still
    /// registered, its next touch faults again.
    case remove(start: UInt64, end: UInt64)
    /// [start, end) was unmapped (munmap, mremap shrink).
    case unmap(start: UInt64, end: UInt64)
    /// [from, from + length) moved to `to` (mremap).
    case remap(from: UInt64, to: UInt64, length: UInt64)
    /// The process forked; a new userfaultfd for the child (not requested by Swiftlet).
    case fork(descriptor: Int32)
    /// An event type this build does not know.
    case unknown(UInt8)

    /// Decodes one `struct uffd_msg` (`UserfaultFD.messageSize` bytes).
    public init?(message bytes: [UInt8]) {
        guard bytes.count >= UserfaultFD.messageSize else { return nil }
        // SAFETY: the array holds at least sizeof(struct uffd_msg) bytes; the C side memcpys them.
        let decoded = bytes.withUnsafeBytes { raw in ckvm_uffd_decode(raw.baseAddress) }
        switch decoded.event {
        case CKVM_UFFD_EVENT_PAGEFAULT: self = .pageFault(address: decoded.first, flags: decoded.flags)
        case CKVM_UFFD_EVENT_REMOVE: self = .remove(start: decoded.first, end: decoded.second)
        case CKVM_UFFD_EVENT_UNMAP: self = .unmap(start: decoded.first, end: decoded.second)
        case CKVM_UFFD_EVENT_REMAP: self = .remap(from: decoded.first, to: decoded.second, length: decoded.third)
        case CKVM_UFFD_EVENT_FORK: self = .fork(descriptor: Int32(truncatingIfNeeded: decoded.first))
        default: self = .unknown(decoded.event)
        }
    }
}

/// A userfaultfd: page faults in the ranges registered with it are
/// reported on it (`readEvent`) instead of being served by the kernel,
/// and resolved with `copy` or `zeroPage`. The registering process and
/// the serving one may differ (the descriptor is passed over a socket).
public final class UserfaultFD: Sendable {
    public let descriptor: OwnedFileDescriptor

    public static let messageSize = Int(CKVM_UFFD_MESSAGE_SIZE)
    /// Firecracker's features: UFFD_FEATURE_EVENT_REMOVE (the only one it requires).
    public static let firecrackerFeatures: UInt64 = CKVM_UFFD_FEATURE_EVENT_REMOVE

    public var rawValue: Int32 { descriptor.rawValue }

    /// Adopts a userfaultfd received from another process.
    public init(adopting descriptor: OwnedFileDescriptor) {
        self.descriptor = descriptor
    }

    /// A new userfaultfd, close-on-exec and non-blocking, handling faults
    /// from the kernel too (no UFFD_USER_MODE_ONLY: KVM touches guest RAM
    /// for the vCPUs), as Firecracker creates it: the userfaultfd syscall,
    /// or where that is refused (EPERM: vm.unprivileged_userfaultfd is 0
    /// and the process lacks CAP_SYS_PTRACE) /dev/userfaultfd, whose file
    /// permissions decide instead (Linux 6.1+). Then the UFFDIO_API
    /// handshake asking for `features`.
    public static func create(features: UInt64 = firecrackerFeatures) throws(SystemCallError) -> UserfaultFD {
        let flags = O_CLOEXEC | O_NONBLOCK
        let raw: Int32
        do {
            raw = try systemCall("userfaultfd") { ckvm_userfaultfd(flags) }
        } catch where error.errno.rawValue == EPERM || error.errno.rawValue == ENOSYS {
            let device: OwnedFileDescriptor
            do {
                device = try OwnedFileDescriptor.open("/dev/userfaultfd", flags: O_RDWR)
            } catch let fallback {
                throw SystemCallError(call: "userfaultfd (and the /dev/userfaultfd fallback: \(fallback.errno))", errno: error.errno)
            }
            raw = try device.ioctl("USERFAULTFD_IOC_NEW", CKVM_USERFAULTFD_IOC_NEW, value: UInt(flags))
        }
        let uffd = UserfaultFD(adopting: OwnedFileDescriptor(adopting: raw))
        var api = uffdio_api(api: CKVM_UFFD_API, features: features, ioctls: 0)
        try uffd.descriptor.ioctl("UFFDIO_API", CKVM_UFFDIO_API, pointer: &api)
        return uffd
    }

    /// Registers [address, address + length) for missing-page faults
    /// (UFFDIO_REGISTER_MODE_MISSING). Both must be page aligned.
    public func registerMissing(address: UInt64, length: UInt64) throws(SystemCallError) {
        var request = uffdio_register(range: uffdio_range(start: address, len: length), mode: CKVM_UFFDIO_REGISTER_MODE_MISSING, ioctls: 0)
        try descriptor.ioctl("UFFDIO_REGISTER", CKVM_UFFDIO_REGISTER, pointer: &request)
    }

    /// Stops reporting faults in [address, address + length): they are
    /// served by the kernel again (zero pages for anonymous memory).
    public func unregister(address: UInt64, length: UInt64) throws(SystemCallError) {
        var range = uffdio_range(start: address, len: length)
        try descriptor.ioctl("UFFDIO_UNREGISTER", CKVM_UFFDIO_UNREGISTER, pointer: &range)
    }

    /// The next event, or nil when none is pending (EAGAIN) or the
    /// registering process is gone (end of file).
    public func readEvent() throws(SystemCallError) -> UserfaultEvent? {
        var bytes = [UInt8](repeating: 0, count: Self.messageSize)
        let count: Int
        do {
            // SAFETY: read writes at most bytes.count bytes into the array's storage.
            count = try bytes.withUnsafeMutableBytes { raw in
                Result { () throws(SystemCallError) in try descriptor.read(into: raw) }
            }.get()
        } catch where error.errno == .wouldBlock {
            return nil
        }
        guard count == Self.messageSize else { return nil }
        return UserfaultEvent(message: bytes)
    }

    /// The outcome of a copy or zero-page request.
    public enum Resolution: Equatable, Sendable {
        /// The page is now present and the faulting threads woken.
        case resolved
        /// The page was already present (another fault served it): EEXIST.
        case alreadyPresent
        /// The address space is changing (a REMOVE/UNMAP event is pending):
        /// EAGAIN; read events, then try again.
        case retry
    }

    /// UFFDIO_COPY: fills `length` bytes at `destination` (page aligned, in
    /// the registering process) from `source` (in this process) and wakes
    /// the threads waiting on it.
    public func copy(to destination: UInt64, from source: UnsafeRawPointer, length: UInt64) throws(SystemCallError) -> Resolution {
        // SAFETY: only the address is passed; the caller keeps `length` bytes at `source` mapped for the call.
        var request = uffdio_copy(dst: destination, src: UInt64(UInt(bitPattern: source)), len: length, mode: 0, copy: 0)
        do {
            try descriptor.ioctl("UFFDIO_COPY", CKVM_UFFDIO_COPY, pointer: &request)
        } catch {
            return try Self.resolution(error, done: request.copy)
        }
        return .resolved
    }

    /// UFFDIO_ZEROPAGE: maps zero pages over `length` bytes at `destination`.
    public func zeroPage(at destination: UInt64, length: UInt64) throws(SystemCallError) -> Resolution {
        var request = uffdio_zeropage(range: uffdio_range(start: destination, len: length), mode: 0, zeropage: 0)
        do {
            try descriptor.ioctl("UFFDIO_ZEROPAGE", CKVM_UFFDIO_ZEROPAGE, pointer: &request)
        } catch {
            return try Self.resolution(error, done: request.zeropage)
        }
        return .resolved
    }

    private static func resolution(_ error: SystemCallError, done: Int64) throws(SystemCallError) -> Resolution {
        switch error.errno.rawValue {
        case EEXIST: return .alreadyPresent
        case EAGAIN: return .retry
        default:
            // A partial copy reports the bytes done (or -errno) in the request itself.
            if done == -Int64(EEXIST) { return .alreadyPresent }
            if done == -Int64(EAGAIN) { return .retry }
            throw error
        }
    }
}
