import Glibc

/// An anonymous or file-backed mapping, unmapped on deinit.
public final class MemoryMapping: @unchecked Sendable {
    // @unchecked: the mapping's address and size never change; access to the
    // bytes is synchronised by whoever shares them (the guest and KVM).
    public let address: UnsafeMutableRawPointer
    public let size: Int

    /// Maps `size` bytes of private anonymous memory, zero-filled, not reserved
    /// in swap (guest RAM is touched on demand).
    public init(anonymousSize size: Int) throws(SystemCallError) {
        let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let pointer, pointer != MAP_FAILED else {
            throw SystemCallError(call: "mmap \(size) anonymous bytes", errno: .current)
        }
        self.address = pointer
        self.size = size
    }

    /// Maps `size` bytes of `descriptor` shared, as for the KVM vCPU run area.
    public init(sharedFile descriptor: OwnedFileDescriptor, size: Int, offset: Int = 0) throws(SystemCallError) {
        let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.rawValue, off_t(offset))
        guard let pointer, pointer != MAP_FAILED else {
            throw SystemCallError(call: "mmap fd \(descriptor.rawValue)", errno: .current)
        }
        self.address = pointer
        self.size = size
    }

    /// Maps `size` bytes of `descriptor` from `offset` (page aligned) private
    /// and writable: pages are read from the file when first touched, and
    /// writes go to private copies, never to the file. Not reserved in swap,
    /// like the anonymous mapping. For guest RAM restored from a snapshot.
    public init(privateFile descriptor: OwnedFileDescriptor, size: Int, offset: UInt64) throws(SystemCallError) {
        guard let fileOffset = off_t(exactly: offset) else {
            throw SystemCallError(call: "mmap fd \(descriptor.rawValue) at offset \(offset)", errno: .invalidArgument)
        }
        let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, descriptor.rawValue, fileOffset)
        guard let pointer, pointer != MAP_FAILED else {
            throw SystemCallError(call: "mmap fd \(descriptor.rawValue) private at offset \(offset)", errno: .current)
        }
        self.address = pointer
        self.size = size
    }

    /// Advises the kernel about this mapping (e.g. MADV_DONTDUMP, MADV_HUGEPAGE).
    public func advise(_ advice: Int32) throws(SystemCallError) {
        _ = try systemCall("madvise \(advice)") { madvise(address, size, advice) }
    }

    deinit {
        munmap(address, size)
    }
}
