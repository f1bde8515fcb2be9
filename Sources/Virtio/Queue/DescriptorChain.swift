import GuestMemory

/// One guest buffer of a descriptor chain, already checked to lie inside
/// guest RAM (in one region).
public struct GuestBuffer: Sendable, Equatable {
    public let address: GuestAddress
    public let length: UInt32

    public init(address: GuestAddress, length: UInt32) {
        self.address = address
        self.length = length
    }
}

/// A validated descriptor chain: the device-readable buffers (driver to
/// device) followed by the device-writable ones, indirect tables flattened.
/// `head` is what goes back in the used ring.
public struct DescriptorChain: Sendable, Equatable {
    public internal(set) var head: UInt16
    public internal(set) var readable: [GuestBuffer]
    public internal(set) var writable: [GuestBuffer]

    public init(head: UInt16, readable: [GuestBuffer], writable: [GuestBuffer]) {
        self.head = head
        self.readable = readable
        self.writable = writable
    }

    /// An empty chain, for `Virtqueue.popChain(into:)` to fill.
    public init() {
        self.init(head: 0, readable: [], writable: [])
    }

    /// Total bytes the device may read (cannot overflow: at most 2^16 buffers of < 2^32 bytes).
    public var readableLength: UInt64 { readable.reduce(0) { $0 + UInt64($1.length) } }
    /// Total bytes the device may write.
    public var writableLength: UInt64 { writable.reduce(0) { $0 + UInt64($1.length) } }
}
