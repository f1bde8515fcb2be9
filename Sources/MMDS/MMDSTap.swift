import Glibc
import HostSystem
import Synchronization
import VirtioNet

/// A tap with MMDS in front of it, for an interface listed in the MMDS
/// configuration. The virtio-net device uses it like any tap: frames the
/// guest sends to the MMDS address go to the network stack instead of the
/// tap, and the stack's answers come out of `receive` ahead of the tap's
/// frames (as Firecracker's device asks MMDS first).
///
/// The device's worker polls `descriptor`: an epoll instance holding the
/// tap and an eventfd that is readable while the stack has frames to hand
/// over, so the worker wakes for either without knowing about MMDS. When
/// the guest has no receive buffers the device stops polling, as it does
/// for the tap, and the stack keeps its answers (bounded) until it asks again.
public final class MMDSTap: TapBackend {
    public let inner: any TapBackend
    let stack: Mutex<MMDSNetworkStack>
    let pending: EventFD
    let readiness: Epoll
    let clock: @Sendable () -> UInt64

    public init(wrapping inner: any TapBackend, address: IPv4Address, service: MetadataService,
                clock: @escaping @Sendable () -> UInt64 = MetadataService.monotonicMilliseconds) throws(SystemCallError) {
        self.inner = inner
        stack = Mutex(MMDSNetworkStack(address: address, service: service))
        self.clock = clock
        pending = try EventFD()
        readiness = try Epoll()
        if inner.descriptor >= 0 { try readiness.add(inner.descriptor, token: 0) }
        try readiness.add(pending.descriptor.rawValue, token: 1)
    }

    public var descriptor: Int32 { readiness.descriptor.rawValue }
    public var label: String { inner.label }
    public var address: IPv4Address { stack.withLock { $0.address } }

    public func setOffloads(_ flags: UInt32) throws(VirtioNetError) {
        try inner.setOffloads(flags)
    }

    /// A frame from the guest: to MMDS if it is addressed there, else to the tap.
    public func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        let total = vectors.reduce(0) { $0 + $1.iov_len }
        let headerSize = VirtioNetHeader.size
        // 12 bytes of virtio-net header, then the Ethernet header and as far as the ARP target address.
        let head = Self.gather(vectors, limit: headerSize + 42)
        let address = stack.withLock { $0.address }
        guard head.count > headerSize, MMDSNetworkStack.isMetadataFrame(head[headerSize...], address: address) else {
            return try inner.send(vectors)
        }
        let checksumOffloaded = head[0] & VirtioNetHeader.needsChecksum != 0
        let frame = Array(Self.gather(vectors, limit: headerSize + VirtioNetFrame.maximumLength).dropFirst(headerSize))
        let now = clock()
        stack.withLock { stack in
            stack.receive(frame: frame, checksumOffloaded: checksumOffloaded, now: now)
            if stack.hasFrameToSend { try? pending.signal() }
        }
        return total
    }

    /// The next frame for the guest: the stack's first, then the tap's.
    public func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        let now = clock()
        let frame = stack.withLock { stack -> [UInt8]? in
            stack.expireTimers(now: now)
            let frame = stack.nextFrame(now: now)
            // Level-triggered: the eventfd stays readable exactly while frames wait.
            if stack.hasFrameToSend { try? pending.signal() } else { _ = try? pending.consume() }
            return frame
        }
        guard let frame else { return try inner.receive(into: vectors) }
        // virtio_net_hdr_v1 of zeros: no offloads, checksums complete; the device sets num_buffers.
        return Self.scatter([UInt8](repeating: 0, count: VirtioNetHeader.size) + frame, into: vectors)
    }

    /// The first `limit` bytes the vectors hold.
    static func gather(_ vectors: UnsafeBufferPointer<iovec>, limit: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for vector in vectors where bytes.count < limit {
            guard let base = vector.iov_base else { continue }
            let count = min(vector.iov_len, limit - bytes.count)
            // SAFETY: the device vouches for iov_len readable bytes at iov_base for this call.
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: base, count: count))
        }
        return bytes
    }

    /// Copies `bytes` into the vectors; returns the full length, larger than
    /// the vectors' room if it did not fit (as a tap's readv reports).
    static func scatter(_ bytes: [UInt8], into vectors: UnsafeBufferPointer<iovec>) -> Int {
        var offset = 0
        for vector in vectors where offset < bytes.count {
            guard let base = vector.iov_base else { continue }
            let count = min(vector.iov_len, bytes.count - offset)
            // SAFETY: the device vouches for iov_len writable bytes at iov_base for this call; the source slice is inside `bytes`.
            bytes.withUnsafeBytes { source in
                guard let from = source.baseAddress else { return }
                base.copyMemory(from: from + offset, byteCount: count)
            }
            offset += count
        }
        return bytes.count
    }
}
