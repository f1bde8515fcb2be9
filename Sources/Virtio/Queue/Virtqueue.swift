import GuestMemory
import Synchronization

/// Where the driver put one split virtqueue (VirtIO 1.2 section 2.7), as it
/// wrote it through the transport.
public struct VirtqueueConfiguration: Sendable, Equatable {
    public var size: UInt16
    public var descriptorTable: GuestAddress
    public var availableRing: GuestAddress
    public var usedRing: GuestAddress

    public init(size: UInt16, descriptorTable: GuestAddress, availableRing: GuestAddress, usedRing: GuestAddress) {
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
    }
}

/// One entry of a descriptor table, as the driver writes it (little-endian,
/// 16 bytes).
struct RawDescriptor: GuestMemoryValue {
    var address: UInt64
    var length: UInt32
    var flags: UInt16
    var next: UInt16

    static let size: UInt64 = 16
    static let hasNext: UInt16 = 1
    static let deviceWritable: UInt16 = 2
    static let indirect: UInt16 = 4
}

/// The device side of one split virtqueue. Owned by exactly one thread (the
/// device's worker) once the device is activated.
///
/// A device loop looks like:
///
///     while true {
///         while let chain = try queue.popChain() { ...; try queue.addUsed(head: chain.head, writtenLength: n) }
///         if try queue.shouldInterrupt() { interrupt.signalUsedBuffers(queue: i) }
///         if try !queue.enableNotifications() { break }   // true: more arrived meanwhile
///     }
///
/// Every index and address read from the rings is validated before use: a
/// bad one throws `VirtqueueError` and the queue is unusable until reset.
public struct Virtqueue: Sendable {
    public let configuration: VirtqueueConfiguration
    /// VIRTIO_F_EVENT_IDX was negotiated: used_event / avail_event suppress notifications.
    public let eventIndex: Bool
    /// VIRTIO_F_INDIRECT_DESC was negotiated: chains may use indirect tables.
    public let indirectDescriptors: Bool
    /// The most bytes one chain's buffers may cover in all (readable plus
    /// writable); a longer chain breaks the queue (`chainLengthExceeded`).
    public private(set) var maximumChainLength: UInt64
    let memory: GuestMemory
    /// The next available-ring slot the device will read (free-running).
    public internal(set) var nextAvailable: UInt16 = 0
    /// The next used-ring slot the device will write (free-running).
    public internal(set) var nextUsed: UInt16 = 0
    /// `nextUsed` when `shouldInterrupt` last ran: the used entries since
    /// then are the ones an interrupt would announce.
    var usedAtLastInterruptCheck: UInt16 = 0

    // Offsets inside the rings (section 2.7.6 and 2.7.8).
    static let ringFlagsOffset: UInt64 = 0
    static let ringIndexOffset: UInt64 = 2
    static let ringEntriesOffset: UInt64 = 4
    static let availableNoInterrupt: UInt16 = 1
    static let usedNoNotify: UInt16 = 1

    /// Validates the rings (size, alignment, inside RAM) against `maximumSize`.
    /// `features` are the negotiated feature bits; `maximumChainLength` bounds
    /// the bytes one chain may cover (the device's `maximumChainLength`).
    public init(configuration: VirtqueueConfiguration, maximumSize: UInt16, features: UInt64, memory: GuestMemory,
                maximumChainLength: UInt64 = .max) throws(VirtqueueError) {
        let size = configuration.size
        guard size > 0, size & (size - 1) == 0, size <= maximumSize else {
            throw .invalidSize(size, maximum: maximumSize)
        }
        let count = UInt64(size)
        let rings: [(name: String, address: GuestAddress, length: UInt64, alignment: UInt64)] = [
            ("descriptor table", configuration.descriptorTable, RawDescriptor.size * count, 16),
            ("available ring", configuration.availableRing, 6 + 2 * count, 2),
            ("used ring", configuration.usedRing, 6 + 8 * count, 4),
        ]
        for ring in rings {
            guard ring.address.rawValue % ring.alignment == 0 else {
                throw .misalignedRing(ring: ring.name, address: ring.address, alignment: ring.alignment)
            }
            guard memory.contains(ring.address, length: ring.length) else {
                throw .ringOutOfBounds(ring: ring.name, address: ring.address, length: ring.length)
            }
        }
        self.configuration = configuration
        self.eventIndex = features & VirtioFeature.eventIndex != 0
        self.indirectDescriptors = features & VirtioFeature.indirectDescriptors != 0
        self.memory = memory
        self.maximumChainLength = maximumChainLength
    }

    var size: UInt16 { configuration.size }

    /// Lowers `maximumChainLength` to `limit` (never raises it): a device
    /// applies its own cap whoever built the queue.
    public mutating func limitChainLength(to limit: UInt64) {
        maximumChainLength = min(maximumChainLength, limit)
    }

    // The rings were checked to be in RAM at init, so these offsets are in bounds.
    var availableIndexAddress: GuestAddress { configuration.availableRing + Self.ringIndexOffset }
    var usedEventAddress: GuestAddress { configuration.availableRing + (Self.ringEntriesOffset + 2 * UInt64(size)) }
    var usedIndexAddress: GuestAddress { configuration.usedRing + Self.ringIndexOffset }
    var availableEventAddress: GuestAddress { configuration.usedRing + (Self.ringEntriesOffset + 8 * UInt64(size)) }

    func load<T: GuestMemoryValue>(_ type: T.Type, at address: GuestAddress) throws(VirtqueueError) -> T {
        do {
            return try memory.read(T.self, at: address)
        } catch {
            throw .memory(error)
        }
    }

    func store<T: GuestMemoryValue>(_ value: T, at address: GuestAddress) throws(VirtqueueError) {
        do {
            try memory.write(value, at: address)
        } catch {
            throw .memory(error)
        }
    }

    /// A ring index or flags word the driver may change (or read) at the same
    /// time: one untearable access.
    func loadShared(at address: GuestAddress) throws(VirtqueueError) -> UInt16 {
        try VirtqueueError.guarding { () throws(GuestMemoryError) in try memory.readShared(at: address) }
    }

    func storeShared(_ value: UInt16, at address: GuestAddress) throws(VirtqueueError) {
        try VirtqueueError.guarding { () throws(GuestMemoryError) in try memory.writeShared(value, at: address) }
    }

    /// The driver's available index, read before the entries it publishes.
    func availableIndex() throws(VirtqueueError) -> UInt16 {
        let index = try loadShared(at: availableIndexAddress)
        // The ring entries and descriptors the index covers must be read after it.
        atomicMemoryFence(ordering: .acquiring)
        return index
    }

    /// True when the driver has made chains available that the device has not taken.
    public func hasAvailable() throws(VirtqueueError) -> Bool {
        try availableIndex() != nextAvailable
    }

    /// The next available chain, validated; nil when the driver has made none available.
    public mutating func popChain() throws(VirtqueueError) -> DescriptorChain? {
        var chain = DescriptorChain()
        return try popChain(into: &chain) ? chain : nil
    }

    /// Like `popChain()`, filling `chain` in place: its buffer arrays keep
    /// their storage, so a data plane that reuses one chain per frame
    /// allocates nothing. False (chain untouched) when none is available.
    public mutating func popChain(into chain: inout DescriptorChain) throws(VirtqueueError) -> Bool {
        let available = try availableIndex()
        let pending = available &- nextAvailable
        guard pending != 0 else { return false }
        guard pending <= size else {
            throw .availableIndexJump(previous: nextAvailable, current: available, size: size)
        }
        let slot = configuration.availableRing + (Self.ringEntriesOffset + 2 * UInt64(nextAvailable % size))
        let head = try load(UInt16.self, at: slot)
        try walkChain(head: head, into: &chain)
        nextAvailable &+= 1
        return true
    }

    /// Follows the chain starting at `head`, flattening an indirect table.
    func walkChain(head: UInt16) throws(VirtqueueError) -> DescriptorChain {
        var chain = DescriptorChain()
        try walkChain(head: head, into: &chain)
        return chain
    }

    /// `walkChain(head:)` into `chain`'s storage.
    func walkChain(head: UInt16, into chain: inout DescriptorChain) throws(VirtqueueError) {
        var table = configuration.descriptorTable
        var tableLength = UInt32(size)
        var inIndirectTable = false
        var index = head
        var visited = 0
        var limit = Int(size)
        var totalLength: UInt64 = 0
        chain.head = head
        chain.readable.removeAll(keepingCapacity: true)
        chain.writable.removeAll(keepingCapacity: true)
        while true {
            guard UInt32(index) < tableLength else {
                throw .descriptorIndexOutOfRange(index: index, tableLength: tableLength)
            }
            visited += 1
            // Bounded walk: a loop or an oversize chain ends here.
            guard visited <= limit else { throw .chainTooLong(head: head, limit: limit) }
            let descriptor = try load(RawDescriptor.self, at: table + UInt64(index) * RawDescriptor.size)

            if descriptor.flags & RawDescriptor.indirect != 0 {
                guard indirectDescriptors else {
                    throw .invalidIndirectTable(head: head, reason: "INDIRECT_DESC was not negotiated")
                }
                guard !inIndirectTable else { throw .invalidIndirectTable(head: head, reason: "nested indirect table") }
                guard visited == 1 else {
                    throw .invalidIndirectTable(head: head, reason: "indirect descriptor is not the first of its chain")
                }
                guard descriptor.flags & RawDescriptor.hasNext == 0 else {
                    throw .invalidIndirectTable(head: head, reason: "INDIRECT and NEXT both set")
                }
                let entries = descriptor.length / UInt32(RawDescriptor.size)
                guard descriptor.length % UInt32(RawDescriptor.size) == 0, entries > 0 else {
                    throw .invalidIndirectTable(head: head, reason: "length \(descriptor.length) is not a non-zero multiple of 16")
                }
                guard entries <= UInt32(size) else {
                    throw .invalidIndirectTable(head: head, reason: "\(entries) entries exceed the queue size \(size)")
                }
                let tableAddress = GuestAddress(descriptor.address)
                guard memory.contains(tableAddress, length: UInt64(descriptor.length)) else {
                    throw .invalidIndirectTable(head: head, reason: "table at \(tableAddress) (\(descriptor.length) bytes) is outside guest RAM")
                }
                table = tableAddress
                tableLength = entries
                inIndirectTable = true
                index = 0
                visited = 0
                limit = Int(entries)
                continue
            }

            guard descriptor.length > 0 else { throw .zeroLengthDescriptor(head: head, descriptor: index) }
            // At most 2^16 lengths below 2^32 each: the sum cannot overflow.
            totalLength += UInt64(descriptor.length)
            guard totalLength <= maximumChainLength else {
                throw .chainLengthExceeded(head: head, limit: maximumChainLength)
            }
            let buffer = GuestBuffer(address: GuestAddress(descriptor.address), length: descriptor.length)
            guard memory.contains(buffer.address, length: UInt64(buffer.length)) else {
                throw .bufferOutOfBounds(descriptor: index, address: buffer.address, length: buffer.length)
            }
            if descriptor.flags & RawDescriptor.deviceWritable != 0 {
                chain.writable.append(buffer)
            } else {
                guard chain.writable.isEmpty else { throw .readableAfterWritable(head: head, descriptor: index) }
                chain.readable.append(buffer)
            }
            guard descriptor.flags & RawDescriptor.hasNext != 0 else { break }
            index = descriptor.next
        }
    }

    /// Returns `head` to the driver with `writtenLength` bytes written into its
    /// writable buffers, and publishes the used index (release order).
    public mutating func addUsed(head: UInt16, writtenLength: UInt32) throws(VirtqueueError) {
        guard head < size else { throw .usedHeadNotInFlight(head: head) }
        let slot = configuration.usedRing + (Self.ringEntriesOffset + 8 * UInt64(nextUsed % size))
        try store(UInt32(head), at: slot)
        try store(writtenLength, at: slot + 4)
        nextUsed &+= 1
        // The element must be visible before the index that publishes it.
        atomicMemoryFence(ordering: .releasing)
        try storeShared(nextUsed, at: usedIndexAddress)
    }

    /// Whether the driver wants an interrupt for the used buffers added since
    /// the last call: used_event with EVENT_IDX, else the NO_INTERRUPT flag.
    public mutating func shouldInterrupt() throws(VirtqueueError) -> Bool {
        let previous = usedAtLastInterruptCheck
        let current = nextUsed
        usedAtLastInterruptCheck = current
        guard current != previous else { return false }
        // The used index store must be visible before the driver's flags are read.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            let usedEvent = try loadShared(at: usedEventAddress)
            // vring_need_event (section 2.7.10): did the index pass used_event?
            return current &- usedEvent &- 1 < current &- previous
        }
        let flags = try loadShared(at: configuration.availableRing + Self.ringFlagsOffset)
        return flags & Self.availableNoInterrupt == 0
    }

    /// Asks the driver to notify on new buffers (avail_event = next index with
    /// EVENT_IDX, else clears NO_NOTIFY), then re-reads the available index:
    /// true if buffers arrived meanwhile and the caller must pop again.
    public mutating func enableNotifications() throws(VirtqueueError) -> Bool {
        if eventIndex {
            try storeShared(nextAvailable, at: availableEventAddress)
        } else {
            try storeShared(0, at: configuration.usedRing + Self.ringFlagsOffset)
        }
        // The store must be visible before the available index is re-read,
        // or a notification the driver skipped could be lost.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return try hasAvailable()
    }

    /// Tells the driver not to notify while the device is busy polling.
    public mutating func disableNotifications() throws(VirtqueueError) {
        // With EVENT_IDX, not advancing avail_event already suppresses notifications.
        guard !eventIndex else { return }
        try storeShared(Self.usedNoNotify, at: configuration.usedRing + Self.ringFlagsOffset)
    }
}
