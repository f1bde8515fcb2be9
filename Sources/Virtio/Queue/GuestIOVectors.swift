import Glibc
import GuestMemory

/// The most buffers one readv/writev/sendmsg takes (Linux's IOV_MAX).
public let maximumIOVectors = 1024

/// Calls `body` with iovecs over `prefix` (host memory, may be empty) followed
/// by `buffers` (guest RAM), so data moves between a tap or socket and guest
/// memory without a copy (virtio-net, virtio-vsock). Each guest buffer is bounds-checked by `withHostBytes`, and
/// the iovecs are used only inside the nested calls that vouch for them.
/// Callers keep `buffers` within `maximumIOVectors` (with the prefix).
public func withIOVectors<Result>(
    memory: GuestMemory, prefix: UnsafeMutableRawBufferPointer? = nil, buffers: ArraySlice<GuestBuffer>,
    _ body: (UnsafeBufferPointer<iovec>) -> Result
) throws(GuestMemoryError) -> Result {
    var vectors: [iovec] = []
    vectors.reserveCapacity(buffers.count + 1)
    if let prefix, prefix.count > 0 {
        vectors.append(iovec(iov_base: prefix.baseAddress, iov_len: prefix.count))
    }
    return try nest(memory: memory, buffers: buffers, vectors: &vectors, body)
}

private func nest<Result>(
    memory: GuestMemory, buffers: ArraySlice<GuestBuffer>, vectors: inout [iovec],
    _ body: (UnsafeBufferPointer<iovec>) -> Result
) throws(GuestMemoryError) -> Result {
    guard let first = buffers.first else {
        // SAFETY: every base address points into a withHostBytes buffer still in scope up the stack.
        return vectors.withUnsafeBufferPointer(body)
    }
    do {
        return try memory.withHostBytes(at: first.address, length: UInt64(first.length)) { (bytes) throws(GuestMemoryError) -> Result in
            vectors.append(iovec(iov_base: bytes.baseAddress, iov_len: bytes.count))
            return try nest(memory: memory, buffers: buffers.dropFirst(), vectors: &vectors, body)
        }
    } catch {
        switch error {
        case let .memory(cause): throw cause
        case let .body(cause): throw cause
        }
    }
}
