import Glibc
import GuestMemory

/// The most buffers one readv/writev/sendmsg takes (Linux's IOV_MAX).
public let maximumIOVectors = 1024

/// Calls `body` with iovecs over `prefix` (host memory, may be empty) followed
/// by `buffers` (guest RAM) less their first `skipping` bytes, so data moves
/// between a tap or socket and guest memory without a copy (virtio-net,
/// virtio-vsock). Each guest buffer is bounds-checked by
/// `GuestMemory.ioVector`; the iovecs live on the stack and are used only
/// inside `body`, while `memory` (owner of the mappings) is kept alive.
/// Callers keep `buffers` within `maximumIOVectors` (with the prefix).
/// Inlinable so each caller gets it specialized: generic, it would look up
/// type metadata on every frame.
@inlinable
public func withIOVectors<Result>(
    memory: GuestMemory, prefix: UnsafeMutableRawBufferPointer? = nil, buffers: ArraySlice<GuestBuffer>, skipping: UInt64 = 0,
    _ body: (UnsafeBufferPointer<iovec>) -> Result
) throws(GuestMemoryError) -> Result {
    // SAFETY: the stack buffer is filled up to `filled` before body reads it;
    // each guest pointer was bounds-checked and memory outlives body.
    let outcome = withUnsafeTemporaryAllocation(of: iovec.self, capacity: buffers.count + 1) { vectors -> Swift.Result<Result, GuestMemoryError> in
        var filled = 0
        if let prefix, prefix.count > 0 {
            vectors[filled] = iovec(iov_base: prefix.baseAddress, iov_len: prefix.count)
            filled += 1
        }
        // Whole buffers inside the skipped bytes go; the next one is trimmed.
        var skip = skipping
        for buffer in buffers {
            let length = UInt64(buffer.length)
            if skip >= length {
                skip -= length
                continue
            }
            do throws(GuestMemoryError) {
                vectors[filled] = try memory.ioVector(at: buffer.address + skip, length: length - skip)
            } catch {
                return .failure(error)
            }
            skip = 0
            filled += 1
        }
        return .success(withExtendedLifetime(memory) { body(UnsafeBufferPointer(rebasing: vectors[..<filled])) })
    }
    return try outcome.get()
}

/// `withIOVectors` over a whole buffer array.
@inlinable
public func withIOVectors<Result>(
    memory: GuestMemory, prefix: UnsafeMutableRawBufferPointer? = nil, buffers: [GuestBuffer], skipping: UInt64 = 0,
    _ body: (UnsafeBufferPointer<iovec>) -> Result
) throws(GuestMemoryError) -> Result {
    try withIOVectors(memory: memory, prefix: prefix, buffers: buffers[...], skipping: skipping, body)
}
