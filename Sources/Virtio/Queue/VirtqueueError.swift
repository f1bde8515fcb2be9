import GuestMemory

/// Why a virtqueue is unusable. Any of these is the driver's fault: the
/// device reports DEVICE_NEEDS_RESET and stops serving the queue.
public enum VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Queue size not a power of two, zero, or above the device's maximum.
    case invalidSize(UInt16, maximum: UInt16)
    /// A ring or table that is not inside guest RAM or not aligned as 2.7 requires.
    case ringOutOfBounds(ring: String, address: GuestAddress, length: UInt64)
    case misalignedRing(ring: String, address: GuestAddress, alignment: UInt64)
    /// The available index moved by more than the queue size.
    case availableIndexJump(previous: UInt16, current: UInt16, size: UInt16)
    /// A descriptor index at or beyond the table's length.
    case descriptorIndexOutOfRange(index: UInt16, tableLength: UInt32)
    /// A buffer not wholly inside one guest RAM region.
    case bufferOutOfBounds(descriptor: UInt16, address: GuestAddress, length: UInt32)
    /// More descriptors than the table holds: a loop, or an oversize chain.
    case chainTooLong(head: UInt16, limit: Int)
    /// The buffers of one chain add up to more bytes than the device accepts
    /// (`VirtioDevice.maximumChainLength`): bounds what one request can make
    /// the device read, write or hold.
    case chainLengthExceeded(head: UInt16, limit: UInt64)
    /// A device-readable descriptor after a device-writable one.
    case readableAfterWritable(head: UInt16, descriptor: UInt16)
    /// Indirect descriptor misuse: nested, with NEXT, in a queue without
    /// INDIRECT_DESC negotiated, or with a length not a non-zero multiple of 16.
    case invalidIndirectTable(head: UInt16, reason: String)
    /// A zero-length buffer where the device needs data.
    case zeroLengthDescriptor(head: UInt16, descriptor: UInt16)
    /// A used-ring element for a head the device never popped.
    case usedHeadNotInFlight(head: UInt16)
    /// A guest-memory access failed though the ring was validated (a bug).
    case memory(GuestMemoryError)

    public var description: String {
        switch self {
        case let .invalidSize(size, maximum):
            "queue size \(size) is invalid: expected a power of two from 1 to \(maximum)"
        case let .ringOutOfBounds(ring, address, length):
            "\(ring) at \(address) (\(length) bytes) is outside guest RAM"
        case let .misalignedRing(ring, address, alignment):
            "\(ring) at \(address) is not aligned to \(alignment) bytes"
        case let .availableIndexJump(previous, current, size):
            "available index went from \(previous) to \(current), more than the queue size \(size)"
        case let .descriptorIndexOutOfRange(index, tableLength):
            "descriptor index \(index) is beyond the table of \(tableLength) entries"
        case let .bufferOutOfBounds(descriptor, address, length):
            "descriptor \(descriptor) points at \(address) (\(length) bytes), outside guest RAM"
        case let .chainTooLong(head, limit):
            "chain at head \(head) has more than \(limit) descriptors (a loop or an oversize chain)"
        case let .chainLengthExceeded(head, limit):
            "chain at head \(head) covers more than \(limit) bytes, this device's limit"
        case let .readableAfterWritable(head, descriptor):
            "chain at head \(head): device-readable descriptor \(descriptor) follows a device-writable one"
        case let .invalidIndirectTable(head, reason):
            "chain at head \(head): invalid indirect table: \(reason)"
        case let .zeroLengthDescriptor(head, descriptor):
            "chain at head \(head): descriptor \(descriptor) has length 0"
        case let .usedHeadNotInFlight(head):
            "device returned head \(head), which it had not taken from the ring"
        case let .memory(error):
            "guest memory: \(error)"
        }
    }
}

extension VirtqueueError {
    /// Runs a guest-memory access on a validated chain's buffers, so device
    /// loops can throw one error type.
    public static func guarding<T>(_ body: () throws(GuestMemoryError) -> T) throws(VirtqueueError) -> T {
        do {
            return try body()
        } catch {
            throw .memory(error)
        }
    }
}
