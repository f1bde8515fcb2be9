import GuestMemory
import Synchronization
import Virtio

/// The driver's side of a split virtqueue, for device tests without a guest:
/// lays out the rings in a `GuestMemory`, places buffers, makes chains
/// available and reads the used ring, as a guest driver would.
public final class DriverQueue {
    public struct Buffer {
        public var address: GuestAddress
        public var length: UInt32
        public var writable: Bool
        public init(address: GuestAddress, length: UInt32, writable: Bool) {
            self.address = address
            self.length = length
            self.writable = writable
        }
    }

    public static let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4

    public let memory: GuestMemory
    public let size: UInt16
    public let configuration: VirtqueueConfiguration
    /// Next descriptor-table slot to hand out (chains use consecutive slots, wrapping).
    var nextDescriptor: UInt16 = 0
    public private(set) var availableIndex: UInt16 = 0
    var lastSeenUsed: UInt16 = 0
    /// Bump allocator for data buffers and indirect tables.
    var nextFree: UInt64

    /// Rings at `base`; data buffers are allocated after them.
    public init(memory: GuestMemory, size: UInt16, base: GuestAddress = GuestAddress(0x10000)) {
        self.memory = memory
        self.size = size
        let table = base
        let available = table + 16 * UInt64(size)
        let used = GuestAddress((available.rawValue + 6 + 2 * UInt64(size) + 3) & ~3)
        configuration = VirtqueueConfiguration(size: size, descriptorTable: table, availableRing: available, usedRing: used)
        nextFree = (used.rawValue + 6 + 8 * UInt64(size) + 0xFFF) & ~0xFFF
    }

    /// A fresh, zeroed guest buffer of `length` bytes (16-byte aligned).
    public func allocate(_ length: Int) -> GuestAddress {
        let address = GuestAddress(nextFree)
        nextFree = (nextFree + UInt64(max(length, 1)) + 15) & ~15
        try? memory.zero(at: address, count: UInt64(length))
        return address
    }

    /// Writes raw descriptor `index` of the table at `table` (default: the ring's table).
    public func writeDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16, table: GuestAddress? = nil) {
        let entry = (table ?? configuration.descriptorTable) + 16 * UInt64(index)
        try? memory.write(address, at: entry)
        try? memory.write(length, at: entry + 8)
        try? memory.write(flags, at: entry + 12)
        try? memory.write(next, at: entry + 14)
    }

    /// Publishes `head` in the available ring.
    public func makeAvailable(_ head: UInt16) {
        try? memory.write(head, at: configuration.availableRing + (4 + 2 * UInt64(availableIndex % size)))
        availableIndex &+= 1
        try? memory.write(availableIndex, at: configuration.availableRing + 2)
    }

    /// Sets the available index directly (to test a driver that lies).
    public func setAvailableIndex(_ index: UInt16) {
        availableIndex = index
        try? memory.write(index, at: configuration.availableRing + 2)
    }

    /// Places a direct chain of `buffers` in consecutive descriptors and makes it available.
    @discardableResult
    public func addChain(_ buffers: [Buffer]) -> UInt16 {
        let head = nextDescriptor
        for (position, buffer) in buffers.enumerated() {
            let index = (head &+ UInt16(position)) % size
            let last = position == buffers.count - 1
            writeDescriptor(index, address: buffer.address.rawValue, length: buffer.length,
                            flags: (buffer.writable ? Self.write : 0) | (last ? 0 : Self.next),
                            next: (index &+ 1) % size)
        }
        nextDescriptor = (head &+ UInt16(buffers.count)) % size
        makeAvailable(head)
        return head
    }

    /// Places `buffers` in an indirect table referenced by one descriptor, and makes it available.
    @discardableResult
    public func addIndirectChain(_ buffers: [Buffer]) -> UInt16 {
        let table = allocate(16 * buffers.count)
        for (position, buffer) in buffers.enumerated() {
            let last = position == buffers.count - 1
            writeDescriptor(UInt16(position), address: buffer.address.rawValue, length: buffer.length,
                            flags: (buffer.writable ? Self.write : 0) | (last ? 0 : Self.next),
                            next: UInt16(position + 1), table: table)
        }
        let head = nextDescriptor
        writeDescriptor(head, address: table.rawValue, length: UInt32(16 * buffers.count), flags: Self.indirect, next: 0)
        nextDescriptor = (head &+ 1) % size
        makeAvailable(head)
        return head
    }

    /// The device's used index.
    public var usedIndex: UInt16 { (try? memory.read(UInt16.self, at: configuration.usedRing + 2)) ?? 0 }

    /// The next used element the driver has not seen, or nil.
    public func popUsed() -> (head: UInt32, length: UInt32)? {
        guard usedIndex != lastSeenUsed else { return nil }
        let slot = configuration.usedRing + (4 + 8 * UInt64(lastSeenUsed % size))
        lastSeenUsed &+= 1
        guard let head = try? memory.read(UInt32.self, at: slot), let length = try? memory.read(UInt32.self, at: slot + 4) else { return nil }
        return (head, length)
    }

    /// The driver's used_event (EVENT_IDX): interrupt when the used index passes it.
    public func setUsedEvent(_ value: UInt16) {
        try? memory.write(value, at: configuration.availableRing + (4 + 2 * UInt64(size)))
    }

    /// The device's avail_event (EVENT_IDX).
    public var availableEvent: UInt16 { (try? memory.read(UInt16.self, at: configuration.usedRing + (4 + 8 * UInt64(size)))) ?? 0 }

    /// VIRTQ_AVAIL_F_NO_INTERRUPT.
    public func setNoInterrupt(_ on: Bool) {
        try? memory.write(UInt16(on ? 1 : 0), at: configuration.availableRing)
    }

    /// VIRTQ_USED_F_NO_NOTIFY as the device set it.
    public var deviceSuppressesNotifications: Bool { ((try? memory.read(UInt16.self, at: configuration.usedRing)) ?? 0) & 1 != 0 }

    /// The device-side queue over these rings.
    public func deviceQueue(features: UInt64 = 0, maximumSize: UInt16? = nil, maximumChainLength: UInt64 = .max) throws -> Virtqueue {
        try Virtqueue(configuration: configuration, maximumSize: maximumSize ?? size, features: features, memory: memory,
                      maximumChainLength: maximumChainLength)
    }
}

/// A `VirtioInterrupt` that records what the device signalled.
public final class RecordingInterrupt: VirtioInterrupt {
    let state = Mutex<(queues: [Int], configurationChanges: Int, errors: [String])>(([], 0, []))

    public init() {}

    public func signalUsedBuffers(queue index: Int) { state.withLock { $0.queues.append(index) } }
    public func signalConfigurationChange() { state.withLock { $0.configurationChanges += 1 } }
    public func reportDeviceError(_ message: String) { state.withLock { $0.errors.append(message) } }

    public var signalledQueues: [Int] { state.withLock { $0.queues } }
    public var configurationChanges: Int { state.withLock { $0.configurationChanges } }
    public var errors: [String] { state.withLock { $0.errors } }
}
