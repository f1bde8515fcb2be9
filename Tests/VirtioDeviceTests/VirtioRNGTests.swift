import Glibc
import GuestMemory
import HostSystem
import RateLimiter
import Testing
import Virtio
@testable import VirtioRNG
import VirtioTestSupport

@Suite("virtio-rng")
struct VirtioRNGTests {
    let memory: GuestMemory
    let queue: DriverQueue
    let interrupt = RecordingInterrupt()
    let notification: EventFD

    init() throws {
        memory = try GuestMemory(ranges: [(GuestAddress(0), 4 << 20)])
        queue = DriverQueue(memory: memory, size: 16, base: GuestAddress(0x10000))
        notification = try EventFD()
    }

    func activate(_ device: VirtioRNG, features: UInt64 = VirtioFeature.version1) throws {
        try device.activate(VirtioActivation(memory: memory, features: features, queues: [
            VirtioQueueActivation(index: 0, queue: try queue.deviceQueue(features: features, maximumSize: VirtioRNG.queueSize), notification: notification),
        ], interrupt: interrupt))
    }

    @Test("the device is entropy with one queue, EVENT_IDX and INDIRECT_DESC, and no configuration space")
    func identity() {
        let device = VirtioRNG()
        #expect(device.deviceType == .entropy && device.queueMaximumSizes == [256])
        #expect(device.offeredFeatures == VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors)
        var bytes = [UInt8](repeating: 0xAA, count: 8)
        bytes.withUnsafeMutableBytes { device.readConfiguration(offset: 0, into: $0) }
        #expect(bytes == Array(repeating: 0, count: 8))
    }

    @Test("writable buffers are filled with random bytes, the chain is returned, and the driver interrupted")
    func fillsBuffers() throws {
        let device = VirtioRNG()
        defer { device.reset() }
        try activate(device)
        let first = queue.allocate(16), second = queue.allocate(100)
        queue.addChain([.init(address: first, length: 16, writable: true), .init(address: second, length: 100, writable: true)])
        try notification.signal()
        var used: (head: UInt32, length: UInt32)?
        #expect(eventually { used = queue.popUsed(); return used != nil })
        #expect(used?.length == 116)
        let bytes = try memory.readBytes(at: first, count: 16) + memory.readBytes(at: second, count: 100)
        #expect(Set(bytes).count > 20, "116 random bytes have many distinct values")
        #expect(eventually { interrupt.signalledQueues == [0] })
        #expect(device.counters.requests.load(ordering: .relaxed) == 1)
        #expect(device.counters.bytesToGuest.load(ordering: .relaxed) == 116)
    }

    @Test("with Firecracker's entropy rate_limiter, requests beyond the ops budget wait for the limiter's timer, in order")
    func rateLimited() throws {
        // Two requests, then one per 100 ms.
        let device = VirtioRNG(rateLimiter: RateLimiterConfiguration(operations: TokenBucketConfiguration(size: 2, refillTimeMilliseconds: 200)))
        defer { device.reset() }
        var heads: [UInt16] = []
        for _ in 0..<5 { heads.append(queue.addChain([.init(address: queue.allocate(32), length: 32, writable: true)])) }
        let start = MonotonicClock().now()
        try activate(device)
        var used: [UInt32] = []
        #expect(eventually { while let entry = queue.popUsed() { used.append(entry.head) }; return used.count >= 2 })
        usleep(30_000)
        while let entry = queue.popUsed() { used.append(entry.head) }
        #expect(used.count == 2, "the third request waits for a token")
        #expect(eventually { while let entry = queue.popUsed() { used.append(entry.head) }; return used.count == 5 })
        #expect(used == heads.map(UInt32.init))
        let elapsed = (MonotonicClock().now() - start) / 1_000_000
        #expect(elapsed >= 280, "3 requests at 10/s after a burst of 2 took \(elapsed) ms")
        #expect(device.counters.bytesToGuest.load(ordering: .relaxed) == 160)
    }

    @Test("buffers queued before activation are served without a notification; indirect chains work")
    func servesQueuedBuffers() throws {
        let device = VirtioRNG()
        defer { device.reset() }
        let buffer = queue.allocate(64)
        queue.addIndirectChain([.init(address: buffer, length: 32, writable: true), .init(address: buffer + 32, length: 32, writable: true)])
        try activate(device, features: VirtioFeature.version1 | VirtioFeature.indirectDescriptors)
        var used: (head: UInt32, length: UInt32)?
        #expect(eventually { used = queue.popUsed(); return used != nil })
        #expect(used?.length == 64)
    }

    @Test("one request gets at most 64 KiB; a chain with no writable buffer gets 0 bytes")
    func limits() throws {
        let device = VirtioRNG()
        defer { device.reset() }
        try activate(device)
        let big = queue.allocate(1 << 20)
        queue.addChain([.init(address: big, length: 1 << 20, writable: true)])
        let readable = queue.allocate(8)
        queue.addChain([.init(address: readable, length: 8, writable: false)])
        try notification.signal()
        var results: [(head: UInt32, length: UInt32)] = []
        #expect(eventually {
            if let next = queue.popUsed() { results.append(next) }
            return results.count == 2
        })
        #expect(results.map(\.length) == [UInt32(VirtioRNG.maximumBytesPerRequest), 0])
    }

    @Test("a broken chain is reported once and the device stops serving until reset")
    func brokenChain() throws {
        let device = VirtioRNG()
        defer { device.reset() }
        try activate(device)
        queue.writeDescriptor(0, address: 1 << 40, length: 16, flags: DriverQueue.write, next: 0)
        queue.makeAvailable(0)
        try notification.signal()
        #expect(eventually { interrupt.errors.count == 1 })
        let good = queue.allocate(8)
        queue.addChain([.init(address: good, length: 8, writable: true)])
        try notification.signal()
        usleep(20_000)
        #expect(interrupt.errors.count == 1 && queue.popUsed() == nil)
    }

    @Test("a failing host source is reported as a device error and counted")
    func failingSource() throws {
        let device = VirtioRNG(source: { (_: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int in
            throw SystemCallError(call: "getrandom", errno: Errno(rawValue: EIO))
        })
        defer { device.reset() }
        try activate(device)
        let buffer = queue.allocate(8)
        queue.addChain([.init(address: buffer, length: 8, writable: true)])
        try notification.signal()
        #expect(eventually { interrupt.errors.count == 1 })
        #expect(interrupt.errors.first?.contains("getrandom") == true)
        #expect(device.counters.errors.load(ordering: .relaxed) == 1)
    }

    @Test("reset joins the worker; activating again serves the queue afresh; reset twice is harmless")
    func resetAndReactivate() throws {
        let device = VirtioRNG()
        try activate(device)
        device.reset()
        device.reset()
        let buffer = queue.allocate(8)
        queue.addChain([.init(address: buffer, length: 8, writable: true)])
        try notification.signal()
        usleep(20_000)
        #expect(queue.popUsed() == nil, "no worker after reset")
        try activate(device)
        defer { device.reset() }
        #expect(eventually { queue.popUsed() != nil })
    }

    @Test("the host source is getrandom: two reads differ")
    func getrandom() throws {
        var first = [UInt8](repeating: 0, count: 32), second = [UInt8](repeating: 0, count: 32)
        #expect(try first.withUnsafeMutableBytes { try fillRandom($0) } == 32)
        #expect(try second.withUnsafeMutableBytes { try fillRandom($0) } == 32)
        #expect(first != second)
    }
}
