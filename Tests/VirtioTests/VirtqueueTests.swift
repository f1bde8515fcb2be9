import GuestMemory
import Testing
import Virtio
import VirtioTestSupport

@Suite("Split virtqueue")
struct VirtqueueTests {
    let memory: GuestMemory
    let driver: DriverQueue

    init() throws {
        memory = try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)])
        driver = DriverQueue(memory: memory, size: 8)
    }

    func buffer(_ length: UInt32, writable: Bool = false) -> DriverQueue.Buffer {
        DriverQueue.Buffer(address: driver.allocate(Int(length)), length: length, writable: writable)
    }

    @Test("A direct chain pops with readable then writable buffers, and its used entry is published")
    func directChain() throws {
        let parts = [buffer(16), buffer(512, writable: true), buffer(1, writable: true)]
        let head = driver.addChain(parts)
        var queue = try driver.deviceQueue()
        let chain = try #require(try queue.popChain())
        #expect(chain.head == head)
        #expect(chain.readable.map(\.length) == [16])
        #expect(chain.writable.map(\.length) == [512, 1])
        #expect(chain.writable[0].address == parts[1].address)
        #expect(try queue.popChain() == nil)
        try queue.addUsed(head: chain.head, writtenLength: 513)
        let used = try #require(driver.popUsed())
        #expect(used.head == UInt32(head) && used.length == 513)
    }

    @Test("An indirect table is flattened when INDIRECT_DESC is negotiated, refused otherwise")
    func indirectChain() throws {
        driver.addIndirectChain([buffer(16), buffer(8), buffer(4, writable: true)])
        var queue = try driver.deviceQueue(features: VirtioFeature.indirectDescriptors)
        let chain = try #require(try queue.popChain())
        #expect(chain.readable.map(\.length) == [16, 8])
        #expect(chain.writable.map(\.length) == [4])

        let other = DriverQueue(memory: memory, size: 8, base: GuestAddress(0x80000))
        other.addIndirectChain([buffer(16)])
        var plain = try other.deviceQueue()
        #expect(throws: VirtqueueError.self) { try plain.popChain() }
    }

    @Test("A descriptor loop ends with chainTooLong instead of hanging")
    func loop() throws {
        let data = driver.allocate(64)
        driver.writeDescriptor(0, address: data.rawValue, length: 64, flags: DriverQueue.next, next: 1)
        driver.writeDescriptor(1, address: data.rawValue, length: 64, flags: DriverQueue.next, next: 0)
        driver.makeAvailable(0)
        var queue = try driver.deviceQueue()
        #expect(throws: VirtqueueError.chainTooLong(head: 0, limit: 8)) { try queue.popChain() }
    }

    @Test("An indirect table that loops is bounded by its own length")
    func indirectLoop() throws {
        let table = driver.allocate(32)
        let data = driver.allocate(8)
        driver.writeDescriptor(0, address: data.rawValue, length: 8, flags: DriverQueue.next, next: 1, table: table)
        driver.writeDescriptor(1, address: data.rawValue, length: 8, flags: DriverQueue.next, next: 0, table: table)
        driver.writeDescriptor(0, address: table.rawValue, length: 32, flags: DriverQueue.indirect, next: 0)
        driver.makeAvailable(0)
        var queue = try driver.deviceQueue(features: VirtioFeature.indirectDescriptors)
        #expect(throws: VirtqueueError.chainTooLong(head: 0, limit: 2)) { try queue.popChain() }
    }

    @Test("A buffer outside guest RAM, or wrapping past 2^64, is refused")
    func outOfRange() throws {
        driver.writeDescriptor(0, address: 1 << 20, length: 16, flags: 0, next: 0)
        driver.writeDescriptor(1, address: UInt64.max - 4, length: 16, flags: 0, next: 0)
        driver.makeAvailable(0)
        driver.makeAvailable(1)
        var queue = try driver.deviceQueue()
        #expect(throws: VirtqueueError.bufferOutOfBounds(descriptor: 0, address: GuestAddress(1 << 20), length: 16)) { try queue.popChain() }
        var second = try driver.deviceQueue()
        _ = try? second.popChain()
        #expect(throws: VirtqueueError.self) { try second.popChain() }
    }

    @Test("Zero-length descriptors, writable-before-readable chains and bad indexes are refused")
    func malformedChains() throws {
        let data = driver.allocate(16)
        driver.writeDescriptor(0, address: data.rawValue, length: 0, flags: 0, next: 0)
        driver.makeAvailable(0)
        var zero = try driver.deviceQueue()
        #expect(throws: VirtqueueError.zeroLengthDescriptor(head: 0, descriptor: 0)) { try zero.popChain() }

        let wrong = DriverQueue(memory: memory, size: 8, base: GuestAddress(0x80000))
        wrong.addChain([buffer(8, writable: true), buffer(8)])
        var wrongQueue = try wrong.deviceQueue()
        #expect(throws: VirtqueueError.readableAfterWritable(head: 0, descriptor: 1)) { try wrongQueue.popChain() }

        let badIndex = DriverQueue(memory: memory, size: 8, base: GuestAddress(0x90000))
        badIndex.makeAvailable(200)
        var badIndexQueue = try badIndex.deviceQueue()
        #expect(throws: VirtqueueError.descriptorIndexOutOfRange(index: 200, tableLength: 8)) { try badIndexQueue.popChain() }
    }

    @Test("An oversize chain (longer than the queue) is refused")
    func oversize() throws {
        let data = driver.allocate(8)
        for index in 0..<8 {
            driver.writeDescriptor(UInt16(index), address: data.rawValue, length: 8, flags: DriverQueue.next, next: UInt16((index + 1) % 8))
        }
        driver.makeAvailable(3)
        var queue = try driver.deviceQueue()
        #expect(throws: VirtqueueError.chainTooLong(head: 3, limit: 8)) { try queue.popChain() }
    }

    @Test("A chain whose buffers add up to more than the queue's byte limit is refused, direct or indirect")
    func chainLengthLimit() throws {
        let whole = driver.allocate(4096)
        driver.addChain([.init(address: whole, length: 3000, writable: false), .init(address: whole, length: 3000, writable: true)])
        var queue = try driver.deviceQueue(features: VirtioFeature.indirectDescriptors, maximumChainLength: 4096)
        #expect(throws: VirtqueueError.chainLengthExceeded(head: 0, limit: 4096)) { try queue.popChain() }

        var lowered = try driver.deviceQueue(features: VirtioFeature.indirectDescriptors)
        lowered.limitChainLength(to: 1 << 20)
        lowered.limitChainLength(to: .max)
        #expect(lowered.maximumChainLength == 1 << 20, "a limit is only ever lowered")

        let other = DriverQueue(memory: memory, size: 8, base: GuestAddress(0x80000))
        other.addIndirectChain([.init(address: whole, length: 4000, writable: false), .init(address: whole, length: 97, writable: true)])
        var indirect = try other.deviceQueue(features: VirtioFeature.indirectDescriptors, maximumChainLength: 4096)
        #expect(throws: VirtqueueError.chainLengthExceeded(head: 0, limit: 4096)) { try indirect.popChain() }
        // Exactly at the limit is fine.
        let exact = DriverQueue(memory: memory, size: 8, base: GuestAddress(0xC0000))
        exact.addChain([.init(address: whole, length: 4096, writable: false)])
        var atLimit = try exact.deviceQueue(maximumChainLength: 4096)
        #expect(try atLimit.popChain()?.readableLength == 4096)
    }

    @Test("An available index that jumps past the queue size is refused")
    func indexJump() throws {
        driver.setAvailableIndex(9)
        var queue = try driver.deviceQueue()
        #expect(throws: VirtqueueError.availableIndexJump(previous: 0, current: 9, size: 8)) { try queue.popChain() }
    }

    @Test("Ring placement is validated: size, alignment, inside RAM")
    func ringValidation() throws {
        var configuration = driver.configuration
        #expect(throws: VirtqueueError.invalidSize(8, maximum: 4)) {
            try Virtqueue(configuration: configuration, maximumSize: 4, features: 0, memory: memory)
        }
        configuration.size = 6
        #expect(throws: VirtqueueError.invalidSize(6, maximum: 8)) {
            try Virtqueue(configuration: configuration, maximumSize: 8, features: 0, memory: memory)
        }
        configuration = driver.configuration
        configuration.descriptorTable = GuestAddress(0x10008)
        #expect(throws: VirtqueueError.misalignedRing(ring: "descriptor table", address: GuestAddress(0x10008), alignment: 16)) {
            try Virtqueue(configuration: configuration, maximumSize: 8, features: 0, memory: memory)
        }
        configuration = driver.configuration
        configuration.usedRing = GuestAddress((1 << 20) - 8)
        #expect(throws: VirtqueueError.self) {
            try Virtqueue(configuration: configuration, maximumSize: 8, features: 0, memory: memory)
        }
    }

    @Test("Without EVENT_IDX, NO_INTERRUPT suppresses interrupts and NO_NOTIFY follows the device")
    func flagsSuppression() throws {
        var queue = try driver.deviceQueue()
        #expect(try queue.shouldInterrupt() == false)  // nothing used yet
        driver.addChain([buffer(8, writable: true)])
        let chain = try #require(try queue.popChain())
        try queue.addUsed(head: chain.head, writtenLength: 8)
        driver.setNoInterrupt(true)
        #expect(try queue.shouldInterrupt() == false)
        driver.addChain([buffer(8, writable: true)])
        try queue.addUsed(head: try #require(try queue.popChain()).head, writtenLength: 8)
        driver.setNoInterrupt(false)
        #expect(try queue.shouldInterrupt() == true)

        try queue.disableNotifications()
        #expect(driver.deviceSuppressesNotifications)
        #expect(try queue.enableNotifications() == false)
        #expect(!driver.deviceSuppressesNotifications)
        driver.addChain([buffer(8)])
        #expect(try queue.enableNotifications() == true)
    }

    @Test("With EVENT_IDX, interrupts follow used_event and avail_event tracks the device")
    func eventIndex() throws {
        var queue = try driver.deviceQueue(features: VirtioFeature.eventIndex)
        driver.setUsedEvent(1)  // interrupt once the used index passes 1, i.e. after the 2nd entry
        for _ in 0..<2 { driver.addChain([buffer(8, writable: true)]) }
        let first = try #require(try queue.popChain())
        try queue.addUsed(head: first.head, writtenLength: 0)
        #expect(try queue.shouldInterrupt() == false)
        let second = try #require(try queue.popChain())
        try queue.addUsed(head: second.head, writtenLength: 0)
        #expect(try queue.shouldInterrupt() == true)
        #expect(try queue.enableNotifications() == false)
        #expect(driver.availableEvent == 2)
    }

    @Test("popChain(into:) refills one chain in place: the previous chain's buffers are gone, the new ones match popChain()")
    func popChainIntoReusesTheChain() throws {
        let first = [buffer(16), buffer(8), buffer(64, writable: true)]
        let second = [buffer(32, writable: true)]
        let firstHead = driver.addChain(first)
        let secondHead = driver.addChain(second)
        var queue = try driver.deviceQueue()
        var chain = DescriptorChain()
        #expect(try queue.popChain(into: &chain))
        #expect(chain.head == firstHead)
        #expect(chain.readable.map(\.length) == [16, 8])
        #expect(chain.writable.map(\.address) == [first[2].address])
        #expect(try queue.popChain(into: &chain))
        #expect(chain.head == secondHead)
        #expect(chain.readable.isEmpty)
        #expect(chain.writable == [GuestBuffer(address: second[0].address, length: 32)])
        // Nothing left: false, and the chain keeps what it had.
        #expect(try queue.popChain(into: &chain) == false)
        #expect(chain.head == secondHead)
    }

    @Test("A bad chain popped into a reused chain still breaks the queue")
    func popChainIntoValidates() throws {
        driver.addChain([buffer(8, writable: true), buffer(8)])
        var queue = try driver.deviceQueue()
        var chain = DescriptorChain()
        #expect(throws: VirtqueueError.readableAfterWritable(head: 0, descriptor: 1)) { try queue.popChain(into: &chain) }
    }
}
