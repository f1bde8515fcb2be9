import GuestMemory

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
public struct Virtqueue: Sendable {
    public let configuration: VirtqueueConfiguration
    /// VIRTIO_F_EVENT_IDX was negotiated: used_event / avail_event suppress notifications.
    public let eventIndex: Bool
    /// VIRTIO_F_INDIRECT_DESC was negotiated: chains may use indirect tables.
    public let indirectDescriptors: Bool
    let memory: GuestMemory

    /// Validates the rings (size, alignment, inside RAM) against `maximumSize`.
    /// `features` are the negotiated feature bits.
    public init(configuration: VirtqueueConfiguration, maximumSize: UInt16, features: UInt64, memory: GuestMemory) throws(VirtqueueError) {
        self.configuration = configuration
        self.eventIndex = features & VirtioFeature.eventIndex != 0
        self.indirectDescriptors = features & VirtioFeature.indirectDescriptors != 0
        self.memory = memory
        fatalError("Virtqueue: not implemented yet")
    }

    /// The next available chain, validated; nil when the driver has made none available.
    public mutating func popChain() throws(VirtqueueError) -> DescriptorChain? {
        fatalError("Virtqueue: not implemented yet")
    }

    /// Returns `head` to the driver with `writtenLength` bytes written into its
    /// writable buffers, and publishes the used index (release order).
    public mutating func addUsed(head: UInt16, writtenLength: UInt32) throws(VirtqueueError) {
        fatalError("Virtqueue: not implemented yet")
    }

    /// Whether the driver wants an interrupt for the used buffers added since
    /// the last call: used_event with EVENT_IDX, else the NO_INTERRUPT flag.
    public mutating func shouldInterrupt() throws(VirtqueueError) -> Bool {
        fatalError("Virtqueue: not implemented yet")
    }

    /// Asks the driver to notify on new buffers (avail_event = next index with
    /// EVENT_IDX, else clears NO_NOTIFY), then re-reads the available index:
    /// true if buffers arrived meanwhile and the caller must pop again.
    public mutating func enableNotifications() throws(VirtqueueError) -> Bool {
        fatalError("Virtqueue: not implemented yet")
    }

    /// Tells the driver not to notify while the device is busy polling.
    public mutating func disableNotifications() throws(VirtqueueError) {
        fatalError("Virtqueue: not implemented yet")
    }
}
