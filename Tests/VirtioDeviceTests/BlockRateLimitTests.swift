import Glibc
import GuestMemory
import HostSystem
import RateLimiter
import Synchronization
import Testing
import Virtio
@testable import VirtioBlock
import VirtioTestSupport

/// A clock the test moves by hand.
final class ManualClock: RateLimiterClock {
    let time = Atomic<UInt64>(1_000_000_000)
    func now() -> UInt64 { time.load(ordering: .relaxed) }
    func advance(milliseconds: UInt64) { time.add(milliseconds * 1_000_000, ordering: .relaxed) }
}

/// A timer that records its arming and fires when the test says so.
final class ManualTimer: RateLimiterTimer {
    struct State { var armed: UInt64?; var fired = false }
    let state = Mutex(State())
    var descriptor: Int32 { -1 }
    func arm(nanoseconds: UInt64) { state.withLock { $0 = State(armed: nanoseconds) } }
    func disarm() { state.withLock { $0 = State() } }
    func acknowledge() -> Bool { state.withLock { state in defer { state.fired = false }; return state.fired } }
    func fire() { state.withLock { $0 = State(armed: nil, fired: $0.armed != nil) } }
    var armed: UInt64? { state.withLock { $0.armed } }
}

/// The block queue served synchronously through `BlockEventHandler`, with a
/// rate limiter on a manual clock and timer.
final class ThrottledBlockRig {
    let memory: GuestMemory
    let driver: DriverQueue
    let image: TemporaryImage
    let handler: BlockEventHandler
    let clock = ManualClock()
    let timer = ManualTimer()
    let interrupt = RecordingInterrupt()
    let notification: EventFD
    var statuses: [GuestAddress] = []

    init(_ limits: RateLimiterConfiguration) throws {
        memory = try GuestMemory(ranges: [(GuestAddress(0), 4 << 20)])
        driver = DriverQueue(memory: memory, size: 64)
        image = try TemporaryImage()
        notification = try EventFD()
        let features = VirtioFeature.eventIndex
        let processor = BlockRequestProcessor(disk: try DiskImage(path: image.path), memory: memory, features: features,
                                              identifier: [UInt8](repeating: 0, count: 20), counters: VirtioCounters())
        handler = BlockEventHandler(processor: processor,
                                    queue: VirtioQueueActivation(index: 0, queue: try driver.deviceQueue(features: features), notification: notification),
                                    interrupt: interrupt, name: "virtio-blk test", limiter: RateLimiter(limits, clock: clock, timer: timer))
    }

    /// Queues a read of `sectors` sectors at `sector`.
    @discardableResult
    func read(sector: UInt64, sectors: Int = 1) throws -> UInt16 {
        let header = driver.allocate(16), data = driver.allocate(sectors * 512), status = driver.allocate(1)
        try memory.write(BlockRequestType.read, at: header)
        try memory.write(sector, at: header + 8)
        try memory.write(UInt8(0xEE), at: status)
        statuses.append(status)
        return driver.addChain([.init(address: header, length: 16, writable: false), .init(address: data, length: UInt32(sectors * 512), writable: true),
                                .init(address: status, length: 1, writable: true)])
    }

    func usedHeads() -> [UInt32] {
        var heads: [UInt32] = []
        while let entry = driver.popUsed() { heads.append(entry.head) }
        return heads
    }

    /// The limiter's timer fires after `milliseconds`.
    func timerFires(after milliseconds: UInt64) {
        clock.advance(milliseconds: milliseconds)
        timer.fire()
        handler.handle([BlockEventHandler.Token.timer])
    }
}

@Suite("virtio-blk rate limiting and runtime updates", .serialized)
struct BlockRateLimitTests {
    static func operations(_ size: UInt64, _ milliseconds: UInt64) -> RateLimiterConfiguration {
        RateLimiterConfiguration(operations: TokenBucketConfiguration(size: size, refillTimeMilliseconds: milliseconds))
    }

    @Test("Unlimited: every request of a batch is served in one pass and no timer is armed")
    func unlimited() throws {
        let rig = try ThrottledBlockRig(.unlimited)
        for sector in 0..<8 { try rig.read(sector: UInt64(sector)) }
        rig.handler.notified()
        #expect(rig.usedHeads().count == 8)
        #expect(rig.timer.armed == nil)
    }

    @Test("Out of ops tokens: the rest of the batch waits (kept in order, notifications off) and is served when the timer fires")
    func operationsThrottle() throws {
        // Two requests per 100 ms: one token every 50 ms.
        let rig = try ThrottledBlockRig(Self.operations(2, 100))
        var heads: [UInt32] = []
        for sector in 0..<5 { heads.append(UInt32(try rig.read(sector: UInt64(sector)))) }
        rig.handler.notified()
        #expect(rig.usedHeads() == Array(heads[0..<2]))
        #expect(rig.timer.armed == 50_000_000, "the timer is set for the next token")
        #expect(rig.interrupt.signalledQueues == [0], "the served requests were announced")
        // While throttled the device does not ask for notifications.
        let eventBefore = rig.driver.availableEvent
        // A notification while blocked serves nothing.
        rig.handler.notified()
        #expect(rig.usedHeads().isEmpty)
        #expect(rig.driver.availableEvent == eventBefore)
        // A spurious timer wake-up (the timer has not fired) serves nothing either.
        rig.handler.handle([BlockEventHandler.Token.timer])
        #expect(rig.usedHeads().isEmpty)
        rig.timerFires(after: 50)
        #expect(rig.usedHeads() == [heads[2]], "the deferred request goes first")
        rig.timerFires(after: 100)
        #expect(rig.usedHeads() == Array(heads[3..<5]))
        #expect(rig.timer.armed == nil, "all served: nothing left to wait for")
        for status in rig.statuses { #expect(try rig.memory.read(UInt8.self, at: status) == BlockStatus.ok) }
        #expect(rig.driver.availableEvent == 5, "queue drained: notifications asked for again")
    }

    @Test("The bandwidth bucket charges the data of reads; a request larger than the bucket goes through and blocks")
    func bandwidthThrottle() throws {
        // 8 KiB per second.
        let rig = try ThrottledBlockRig(RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 8192, refillTimeMilliseconds: 1000)))
        let first = try rig.read(sector: 0, sectors: 8), second = try rig.read(sector: 8, sectors: 8), third = try rig.read(sector: 16, sectors: 8)
        rig.handler.notified()
        #expect(rig.usedHeads() == [UInt32(first), UInt32(second)])
        #expect(rig.timer.armed == 500_000_000, "4 KiB at 8 KiB/s")
        rig.timerFires(after: 500)
        #expect(rig.usedHeads() == [UInt32(third)])
        // 16 KiB from an empty 8 KiB bucket: served, then two refill times of debt.
        let big = try rig.read(sector: 0, sectors: 32)
        rig.timerFires(after: 1000)
        #expect(rig.usedHeads() == [UInt32(big)])
        #expect(rig.timer.armed == 1_000_000_000)
    }

    @Test("Requests that fail validation complete at once without spending tokens")
    func invalidNotCharged() throws {
        let rig = try ThrottledBlockRig(Self.operations(1, 1000))
        // Past the end of the 128-sector image: IOERR, no token.
        try rig.read(sector: 1000)
        try rig.read(sector: 0)
        rig.handler.notified()
        #expect(rig.usedHeads().count == 2)
        #expect(try rig.memory.read(UInt8.self, at: rig.statuses[0]) == BlockStatus.ioError)
        #expect(try rig.memory.read(UInt8.self, at: rig.statuses[1]) == BlockStatus.ok)
    }

    // MARK: The device, on its worker thread

    struct RunningDisk {
        let memory: GuestMemory
        let driver: DriverQueue
        let device: VirtioBlockDevice
        let interrupt = RecordingInterrupt()
        let notification: EventFD

        init(device: VirtioBlockDevice) throws {
            memory = try GuestMemory(ranges: [(GuestAddress(0), 4 << 20)])
            driver = DriverQueue(memory: memory, size: 64)
            self.device = device
            notification = try EventFD()
            try device.activate(VirtioActivation(memory: memory, features: device.offeredFeatures, queues: [
                VirtioQueueActivation(index: 0, queue: try driver.deviceQueue(features: device.offeredFeatures), notification: notification),
            ], interrupt: interrupt))
        }

        /// Submits one request (header, optional writable data, status) and returns its status address and data.
        func submit(type: UInt32, sector: UInt64 = 0, dataLength: Int = 512) throws -> (status: GuestAddress, data: GuestAddress) {
            let header = driver.allocate(16), data = driver.allocate(max(dataLength, 1)), status = driver.allocate(1)
            try memory.write(type, at: header)
            try memory.write(sector, at: header + 8)
            try memory.write(UInt8(0xEE), at: status)
            var buffers: [DriverQueue.Buffer] = [.init(address: header, length: 16, writable: false)]
            if dataLength > 0 { buffers.append(.init(address: data, length: UInt32(dataLength), writable: true)) }
            buffers.append(.init(address: status, length: 1, writable: true))
            driver.addChain(buffers)
            try notification.signal()
            return (status, data)
        }

        func status(_ address: GuestAddress) -> UInt8? {
            var value: UInt8 = 0xEE
            _ = BlockDeviceTests.waitUntil {
                value = (try? memory.read(UInt8.self, at: address)) ?? 0xEE
                return value != 0xEE
            }
            return value == 0xEE ? nil : value
        }
    }

    @Test("Swapping a placeholder for a real image while running: new capacity and serial, a config interrupt, the new contents read")
    func swapImage() throws {
        let placeholder = try TemporaryImage(size: 0), real = try TemporaryImage(sectors: 64)
        let device = try VirtioBlockDevice(disk: try DiskImage(path: placeholder.path), name: "scratch")
        #expect(BlockDeviceTests.configuration(device, offset: 0, count: 8) == [0, 0, 0, 0, 0, 0, 0, 0])
        let placeholderSerial = device.identifier
        #expect(placeholderSerial == (try DiskImage(path: placeholder.path, lockNow: false)).derivedSerial && !placeholderSerial.isEmpty)
        let disk = try RunningDisk(device: device)
        defer { device.reset() }
        // Capacity 0: a read fails.
        let early = try disk.submit(type: BlockRequestType.read, sector: 0)
        #expect(disk.status(early.status) == BlockStatus.ioError)

        try device.update(disk: try DiskImage(path: real.path))
        #expect(BlockDeviceTests.waitUntil { disk.interrupt.configurationChanges == 1 })
        #expect(BlockDeviceTests.configuration(device, offset: 0, count: 8) == [64, 0, 0, 0, 0, 0, 0, 0])
        let read = try disk.submit(type: BlockRequestType.read, sector: 63)
        #expect(disk.status(read.status) == BlockStatus.ok)
        #expect(try disk.memory.readBytes(at: read.data, count: 512) == TemporaryImage.expectedSector(63))
        // GET_ID follows the image, and is stable for it.
        let id = try disk.submit(type: BlockRequestType.getID, dataLength: 20)
        #expect(disk.status(id.status) == BlockStatus.ok)
        let serial = String(decoding: try disk.memory.readBytes(at: id.data, count: 20).prefix { $0 != 0 }, as: UTF8.self)
        #expect(serial == (try DiskImage(path: real.path, lockNow: false)).derivedSerial)
        #expect(serial != placeholderSerial && device.identifier == serial)
        #expect(device.disk.path == real.path)
    }

    @Test("A swap that does not fit (read-only image for a writable disk) is refused and the old image kept, no interrupt")
    func refusedSwap() throws {
        let image = try TemporaryImage(), other = try TemporaryImage()
        let device = try VirtioBlockDevice(disk: try DiskImage(path: image.path), name: "data")
        let disk = try RunningDisk(device: device)
        defer { device.reset() }
        #expect(throws: VirtioBlockError.self) { try device.update(disk: try DiskImage(path: other.path, readOnly: true)) }
        usleep(50_000)
        #expect(disk.interrupt.configurationChanges == 0)
        #expect(device.disk.path == image.path)
        let read = try disk.submit(type: BlockRequestType.read, sector: 5)
        #expect(disk.status(read.status) == BlockStatus.ok)
        #expect(try disk.memory.readBytes(at: read.data, count: 512) == TemporaryImage.expectedSector(5))
    }

    @Test("A fixed serial (--disk id=) survives a swap; without a worker the swap updates the configuration at once")
    func fixedSerialSwap() throws {
        let image = try TemporaryImage(sectors: 8), other = try TemporaryImage(sectors: 16)
        let device = try VirtioBlockDevice(disk: try DiskImage(path: image.path), identifier: "data-1")
        try device.update(disk: try DiskImage(path: other.path))
        #expect(device.identifier == "data-1")
        #expect(BlockDeviceTests.configuration(device, offset: 0, count: 1) == [16])
    }

    @Test("A limiter update reaches the worker between requests: a blocked queue resumes when the limit is lifted")
    func limiterUpdate() throws {
        let image = try TemporaryImage()
        // One request per 10 minutes: the second waits.
        let device = try VirtioBlockDevice(disk: try DiskImage(path: image.path), name: "slow", rateLimiter: Self.operations(1, 600_000))
        #expect(device.rateLimiter == Self.operations(1, 600_000))
        let disk = try RunningDisk(device: device)
        defer { device.reset() }
        let first = try disk.submit(type: BlockRequestType.read, sector: 1)
        #expect(disk.status(first.status) == BlockStatus.ok)
        let second = try disk.submit(type: BlockRequestType.read, sector: 2)
        usleep(100_000)
        #expect(try disk.memory.read(UInt8.self, at: second.status) == 0xEE, "throttled")
        // Kata's {} changes nothing; an ops bucket of size 0 removes the limit.
        try device.update(rateLimiter: RateLimiterUpdate())
        usleep(50_000)
        #expect(try disk.memory.read(UInt8.self, at: second.status) == 0xEE)
        try device.update(rateLimiter: RateLimiterUpdate(operations: .replace(TokenBucketConfiguration(size: 0, refillTimeMilliseconds: 0))))
        #expect(disk.status(second.status) == BlockStatus.ok)
        #expect(device.rateLimiter.isUnlimited)
        // Each update woke the worker once: nothing left readable, nothing spinning.
        let handler = try #require(device.running.withLock { $0?.handler })
        let before = handler.wakeups.load(ordering: .relaxed)
        usleep(100_000)
        #expect(handler.wakeups.load(ordering: .relaxed) == before, "the worker keeps waking with nothing to do")
        #expect(before <= 8, "\(before) wake-ups for 2 requests and 2 updates")
    }

    @Test("Throttled on the worker: requests complete no faster than the rate, without busy waking")
    func workerRate() throws {
        let image = try TemporaryImage()
        // Five requests per 100 ms, bucket starts full: 20 requests take at least 300 ms.
        let device = try VirtioBlockDevice(disk: try DiskImage(path: image.path), name: "rated", rateLimiter: Self.operations(5, 100))
        let disk = try RunningDisk(device: device)
        defer { device.reset() }
        let start = MonotonicClock().now()
        var statuses: [GuestAddress] = []
        for sector in 0..<20 { statuses.append(try disk.submit(type: BlockRequestType.read, sector: UInt64(sector)).status) }
        for status in statuses { #expect(disk.status(status) == BlockStatus.ok) }
        let elapsed = (MonotonicClock().now() - start) / 1_000_000
        #expect(elapsed >= 280 && elapsed < 5000, "20 requests at 50/s after a burst of 5 took \(elapsed) ms")
        #expect(device.counters.requests.load(ordering: .relaxed) == 20)
    }
}
