import CKVM
import Glibc
import HostSystem

/// Plain-old-data types that may be copied to and from guest memory byte for
/// byte: fixed layout, no references, every bit pattern valid.
public protocol GuestMemoryValue: BitwiseCopyable {}
extension UInt8: GuestMemoryValue {}
extension UInt16: GuestMemoryValue {}
extension UInt32: GuestMemoryValue {}
extension UInt64: GuestMemoryValue {}
extension Int8: GuestMemoryValue {}
extension Int16: GuestMemoryValue {}
extension Int32: GuestMemoryValue {}
extension Int64: GuestMemoryValue {}

public enum GuestMemoryError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `length` bytes at `address` are not inside one RAM region.
    case outOfBounds(address: GuestAddress, length: UInt64)
    /// A shared word not aligned to its size (the host regions are page aligned).
    case misaligned(address: GuestAddress, alignment: UInt64)
    /// The regions asked for overlap or are empty.
    case invalidLayout(String)
    /// The host refused the mapping.
    case mappingFailed(start: GuestAddress, size: UInt64, cause: SystemCallError)
    /// Opening, checking, writing or syncing a snapshot memory file failed.
    case memoryFile(path: String, cause: SystemCallError)
    /// The memory file is a directory, FIFO, device...
    case memoryFileNotRegular(path: String, kind: String)
    /// The memory file ends before the last byte its layout maps.
    case memoryFileTooSmall(path: String, size: UInt64, needed: UInt64)
    /// Handing guest RAM to the page-fault handler at the socket `path`
    /// failed at `step` (Uffd backend: creating the userfaultfd,
    /// registering RAM, connecting, sending the mappings).
    case pageFaultHandler(step: String, path: String, cause: SystemCallError)

    public var description: String {
        switch self {
        case let .outOfBounds(address, length):
            "guest access of \(length) bytes at \(address) is outside guest RAM"
        case let .misaligned(address, alignment):
            "guest word at \(address) is not aligned to \(alignment) bytes"
        case let .invalidLayout(reason):
            "invalid guest memory layout: \(reason)"
        case let .mappingFailed(start, size, cause):
            "mapping \(size) bytes of guest RAM at \(start) failed: \(cause)"
        case let .memoryFile(path, cause):
            "memory file \(path): \(cause)"
        case let .memoryFileNotRegular(path, kind):
            "memory file \(path) is \(kind), not a regular file"
        case let .memoryFileTooSmall(path, size, needed):
            "memory file \(path) is \(size) bytes, smaller than the \(needed) its regions need"
        case let .pageFaultHandler(step, path, cause):
            "page-fault handler at \(path): \(step): \(cause)"
        }
    }
}

/// One contiguous range of guest RAM backed by one host mapping.
public struct GuestMemoryRegion: Sendable {
    public let start: GuestAddress
    public let size: UInt64
    let mapping: MemoryMapping

    /// Host address of the region's first byte, for KVM_SET_USER_MEMORY_REGION.
    public var hostAddress: UnsafeMutableRawPointer { mapping.address }

    /// The first address past the region.
    public var end: UInt64 { start.rawValue + size }

    func contains(_ address: GuestAddress, length: UInt64) -> Bool {
        guard address >= start else { return false }
        let offset = address.rawValue - start.rawValue
        return offset <= size && length <= size - offset
    }
}

/// One region's guest range and host address, as plain integers.
struct HostSpan: Sendable {
    let start: UInt64
    let size: UInt64
    /// The mapping's host address (bit pattern; the region owns the mapping).
    let base: UInt

    @inline(__always)
    func contains(_ address: UInt64, length: UInt64) -> Bool {
        guard address >= start else { return false }
        let offset = address - start
        return offset <= size && length <= size - offset
    }
}

/// Guest RAM: a set of non-overlapping regions. Every access is bounds-checked
/// against one region and fails with `GuestMemoryError.outOfBounds` instead of
/// touching host memory outside it.
public final class GuestMemory: Sendable {
    public let regions: [GuestMemoryRegion]
    /// The regions' bounds and host addresses as plain integers: the lookup
    /// every guest access makes walks these without touching reference counts
    /// (the data plane does several per frame).
    let spans: [HostSpan]
    /// The first span again, stored inline: most accesses hit it, and this
    /// saves a dependent load through the array (base 0 when there is none).
    let firstSpan: HostSpan
    /// The pages the VMM writes, when created `trackingDirtyPages` (diff snapshots).
    let dirtyPages: DirtyPageBitmap?
    /// The Uffd backend's userfaultfd and handler connection, kept open as
    /// long as the RAM is (nil for other memory).
    public let pageFaultHandler: PageFaultHandlerConnection?

    /// Maps anonymous memory for each `(start, size)` range, excluded from
    /// core dumps (MADV_DONTDUMP).
    public convenience init(ranges: [(start: GuestAddress, size: UInt64)], trackingDirtyPages: Bool = false) throws(GuestMemoryError) {
        try self.init(layout: ranges.map { (start: $0.start, size: $0.size, fileOffset: UInt64(0)) }, trackingDirtyPages: trackingDirtyPages) {
            (_, byteCount) throws(SystemCallError) -> MemoryMapping in
            try MemoryMapping(anonymousSize: byteCount)
        }
    }

    /// Checks the layout (non-empty, non-overlapping, no wrap past 2^64),
    /// maps each range with `map`, and keeps the mappings out of core dumps.
    init(
        layout ranges: [(start: GuestAddress, size: UInt64, fileOffset: UInt64)], trackingDirtyPages: Bool = false,
        pageFaultHandler: PageFaultHandlerConnection? = nil,
        map: (_ range: (start: GuestAddress, size: UInt64, fileOffset: UInt64), _ byteCount: Int) throws(SystemCallError) -> MemoryMapping
    ) throws(GuestMemoryError) {
        let sorted = ranges.sorted { $0.start < $1.start }
        var regions: [GuestMemoryRegion] = []
        var previousEnd: UInt64 = 0
        for range in sorted {
            guard range.size > 0 else { throw .invalidLayout("region at \(range.start) is empty") }
            guard range.start.adding(range.size) != nil else {
                throw .invalidLayout("region at \(range.start) of \(range.size) bytes wraps past 2^64")
            }
            guard regions.isEmpty || range.start.rawValue >= previousEnd else {
                throw .invalidLayout("region at \(range.start) overlaps the one before it")
            }
            guard let byteCount = Int(exactly: range.size) else {
                throw .invalidLayout("region of \(range.size) bytes is too large for this host")
            }
            let mapping: MemoryMapping
            do {
                mapping = try map(range, byteCount)
            } catch {
                throw .mappingFailed(start: range.start, size: range.size, cause: error)
            }
            // Guest RAM stays out of core dumps: it is the guest's data (keys,
            // files), and a VMM crash must not copy gigabytes of it to disk.
            do {
                try mapping.advise(MADV_DONTDUMP)
            } catch {
                throw .mappingFailed(start: range.start, size: range.size, cause: error)
            }
            regions.append(GuestMemoryRegion(start: range.start, size: range.size, mapping: mapping))
            previousEnd = range.start.rawValue + range.size
        }
        self.regions = regions
        spans = regions.map { HostSpan(start: $0.start.rawValue, size: $0.size, base: UInt(bitPattern: $0.mapping.address)) }
        firstSpan = spans.first ?? HostSpan(start: 0, size: 0, base: 0)
        self.pageFaultHandler = pageFaultHandler
        dirtyPages = trackingDirtyPages ? DirtyPageBitmap(regionSizes: regions.map(\.size)) : nil
    }

    /// Total bytes of RAM.
    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// Asks the host kernel to back RAM with transparent huge pages
    /// (madvise MADV_HUGEPAGE; Firecracker's `huge_pages: "Transparent"`).
    /// Advisory: where THP is off, nothing changes.
    public func adviseTransparentHugePages() {
        for region in regions { try? region.mapping.advise(MADV_HUGEPAGE) }
    }

    /// True if all `length` bytes at `address` are RAM in one region.
    public func contains(_ address: GuestAddress, length: UInt64 = 1) -> Bool {
        span(containing: address, length: length) != nil
    }

    /// Gives `body` the host bytes backing `length` guest bytes at `address`,
    /// after checking that they lie inside one region. Device back ends use
    /// this to read or write guest buffers without a copy.
    public func withHostBytes<Result, Failure: Error>(
        at address: GuestAddress, length: UInt64,
        _ body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Result
    ) throws(GuestMemoryErrorOr<Failure>) -> Result {
        let pointer: UnsafeMutableRawPointer
        do {
            pointer = try hostPointer(at: address, length: length)
        } catch {
            throw .memory(error)
        }
        // SAFETY: hostPointer proved the length bytes lie inside one region's mapping.
        let buffer = UnsafeMutableRawBufferPointer(start: pointer, count: Int(length))
        // Callers may write through it (device back ends do): count it as written.
        markWritten(address, length: length)
        do {
            // The mapping lives as long as self: keep self alive while body runs.
            return try withExtendedLifetime(self) { () throws(Failure) -> Result in try body(buffer) }
        } catch {
            throw .body(error)
        }
    }

    /// Reads a plain value at `address` (unaligned access is fine).
    // Inlinable (as is `write`) so each caller's T is specialized: generic, a
    // 2- or 16-byte ring access would go through value witnesses and memmove.
    @inlinable
    public func read<T: GuestMemoryValue>(_ type: T.Type = T.self, at address: GuestAddress) throws(GuestMemoryError) -> T {
        let pointer = try hostPointer(at: address, length: UInt64(MemoryLayout<T>.size))
        // SAFETY: hostPointer checked that size-of-T bytes are in bounds; T is plain data.
        return pointer.loadUnaligned(as: T.self)
    }

    /// Writes a plain value at `address`.
    @inlinable
    public func write<T: GuestMemoryValue>(_ value: T, at address: GuestAddress) throws(GuestMemoryError) {
        let pointer = try hostPointer(at: address, length: UInt64(MemoryLayout<T>.size))
        markWritten(address, length: UInt64(MemoryLayout<T>.size))
        // SAFETY: hostPointer checked that size-of-T bytes are in bounds; T is plain data.
        pointer.storeBytes(of: value, as: T.self)
    }

    /// Reads the 2-aligned 16-bit value at `address` in one access. For words
    /// the guest changes concurrently (virtqueue indexes and flags): `read`
    /// may copy byte by byte and see half of an update.
    public func readShared(_ type: UInt16.Type = UInt16.self, at address: GuestAddress) throws(GuestMemoryError) -> UInt16 {
        let pointer = try sharedWordPointer(at: address)
        // SAFETY: in bounds and 2-aligned (checked by sharedWordPointer).
        return ckvm_load_shared_u16(pointer)
    }

    /// Writes the 2-aligned 16-bit value at `address` in one access (see `readShared`).
    public func writeShared(_ value: UInt16, at address: GuestAddress) throws(GuestMemoryError) {
        let pointer = try sharedWordPointer(at: address)
        markWritten(address, length: 2)
        // SAFETY: in bounds and 2-aligned (checked by sharedWordPointer).
        ckvm_store_shared_u16(pointer, value)
    }

    private func sharedWordPointer(at address: GuestAddress) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        guard address.rawValue % 2 == 0 else { throw .misaligned(address: address, alignment: 2) }
        return try hostPointer(at: address, length: 2)
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(bytes: UnsafeRawBufferPointer, at address: GuestAddress) throws(GuestMemoryError) {
        guard bytes.count > 0, let source = bytes.baseAddress else { return }
        let pointer = try hostPointer(at: address, length: UInt64(bytes.count))
        markWritten(address, length: UInt64(bytes.count))
        // SAFETY: hostPointer checked the destination range; source is a valid buffer of that size.
        pointer.copyMemory(from: source, byteCount: bytes.count)
    }

    /// Copies an array of bytes into guest memory at `address`.
    public func write(bytes: some Collection<UInt8>, at address: GuestAddress) throws(GuestMemoryError) {
        let array = Array(bytes)
        // SAFETY: the buffer pointer is used only within this call.
        try array.withUnsafeBytes { raw in
            Result { () throws(GuestMemoryError) in try write(bytes: raw, at: address) }
        }.get()
    }

    /// Copies `destination.count` bytes at `address` into `destination`
    /// (no allocation: the data plane's way to read a header).
    public func read(into destination: UnsafeMutableRawBufferPointer, at address: GuestAddress) throws(GuestMemoryError) {
        guard destination.count > 0, let target = destination.baseAddress else { return }
        let pointer = try hostPointer(at: address, length: UInt64(destination.count))
        // SAFETY: hostPointer checked the source range; destination is a valid buffer of that size.
        withExtendedLifetime(self) { target.copyMemory(from: pointer, byteCount: destination.count) }
    }

    /// An iovec over `length` guest bytes at `address`, bounds-checked and
    /// counted as written, for readv/writev straight to or from guest RAM.
    /// The pointer is valid only while this GuestMemory lives: callers use
    /// it inside `withExtendedLifetime(memory)` (see Virtio's `withIOVectors`).
    public func ioVector(at address: GuestAddress, length: UInt64) throws(GuestMemoryError) -> iovec {
        let pointer = try hostPointer(at: address, length: length)
        markWritten(address, length: length)
        return iovec(iov_base: pointer, iov_len: Int(length))
    }

    /// Reads `count` bytes at `address`.
    public func readBytes(at address: GuestAddress, count: Int) throws(GuestMemoryError) -> [UInt8] {
        guard count > 0 else { return [] }
        let pointer = try hostPointer(at: address, length: UInt64(count))
        // SAFETY: hostPointer checked that count bytes are in bounds.
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// Sets `count` bytes at `address` to zero.
    public func zero(at address: GuestAddress, count: UInt64) throws(GuestMemoryError) {
        guard count > 0 else { return }
        let pointer = try hostPointer(at: address, length: count)
        markWritten(address, length: count)
        // SAFETY: hostPointer checked that count bytes are in bounds.
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Int(count))
    }

    /// The index of the span holding all `length` bytes at `address`.
    @inline(__always)
    func span(containing address: GuestAddress, length: UInt64) -> Int? {
        // Most guests have one or two regions; a linear scan beats anything cleverer.
        for index in spans.indices where spans[index].contains(address.rawValue, length: length) {
            return index
        }
        return nil
    }

    @usableFromInline
    func hostPointer(at address: GuestAddress, length: UInt64) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        if firstSpan.contains(address.rawValue, length: length), let base = UnsafeMutableRawPointer(bitPattern: firstSpan.base) {
            return base + Int(address.rawValue - firstSpan.start)
        }
        guard let index = span(containing: address, length: length),
              let base = UnsafeMutableRawPointer(bitPattern: spans[index].base) else {
            throw .outOfBounds(address: address, length: length)
        }
        return base + Int(address.rawValue - spans[index].start)
    }
}

/// The error of `withHostBytes`: the range was out of bounds, or the body threw.
public enum GuestMemoryErrorOr<Failure: Error>: Error {
    case memory(GuestMemoryError)
    case body(Failure)
}
