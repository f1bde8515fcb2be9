import Glibc
import GuestMemory
import HostSystem
import RateLimiter
import Testing
import Virtio
import VirtioTestSupport
@testable import VirtioNet

@Suite("virtio-net rate limiting", .serialized)
struct VirtioNetRateLimitTests {
    static func operations(_ size: UInt64, _ milliseconds: UInt64) -> RateLimiterConfiguration {
        RateLimiterConfiguration(operations: TokenBucketConfiguration(size: size, refillTimeMilliseconds: milliseconds))
    }

    static func milliseconds(since start: UInt64) -> UInt64 { (MonotonicClock().now() - start) / 1_000_000 }

    /// Queues `count` TX frames of `payload` bytes each and notifies.
    static func transmit(_ bench: NetBench, count: Int, payload: Int = 100) throws {
        for _ in 0..<count {
            bench.transmit.addChain([try bench.readable(VirtioNetHeader().bytes + ethernetFrame(payloadLength: payload))])
        }
        try bench.transmitNotification.signal()
    }

    @Test("TX over its ops budget: the first frames go out at once, the rest at the limiter's pace, in order")
    func transmitThrottled() throws {
        // Two frames, then one every 100 ms.
        let bench = try NetBench(transmitLimiter: Self.operations(2, 200))
        try bench.activate(features: plainFeatures)
        defer { bench.device.reset() }
        let start = MonotonicClock().now()
        try Self.transmit(bench, count: 5)
        #expect(bench.tap.nextSent() != nil && bench.tap.nextSent() != nil)
        #expect(bench.tap.nextSent(timeout: 50) == nil, "the third frame waits for a token")
        for _ in 0..<3 { #expect(bench.tap.nextSent(timeout: 2000) != nil) }
        let elapsed = Self.milliseconds(since: start)
        #expect(elapsed >= 280 && elapsed < 5000, "5 frames at 2 + 10/s took \(elapsed) ms")
        #expect(bench.waitForUsed(bench.transmit, count: 5).count == 5)
        #expect(bench.device.netCounters.transmitThrottled.load(ordering: .relaxed) >= 1)
        let wakeups = bench.device.netCounters.wakeups.load(ordering: .relaxed)
        #expect(wakeups <= 12, "\(wakeups) wake-ups for 5 frames and 3 timer expiries: no spinning")
    }

    @Test("RX over its bandwidth budget: frames stay in the tap until tokens are back, then arrive in order")
    func receiveThrottled() throws {
        // 1 KiB per 100 ms; each frame is 12 + 14 + 500 = 526 bytes: two at once, then one per ~51 ms.
        let bench = try NetBench(receiveLimiter: RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 1024, refillTimeMilliseconds: 100)))
        try bench.activate(features: plainFeatures)
        defer { bench.device.reset() }
        for _ in 0..<8 { bench.receive.addChain([bench.writable(1600)]) }
        try bench.receiveNotification.signal()
        usleep(20_000)
        let start = MonotonicClock().now()
        for index in 0..<6 { try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 500 + index)) }
        var used: [(head: UInt32, length: UInt32)] = []
        for _ in 0..<5000 where used.count < 6 {
            while let entry = bench.receive.popUsed() { used.append(entry) }
            usleep(1000)
        }
        let elapsed = Self.milliseconds(since: start)
        #expect(used.map(\.length) == (0..<6).map { UInt32(526 + $0) }, "all six, in order")
        // 6 x ~528 bytes = 3171; the first 1024 free, the rest at 10 KiB/s: about 210 ms.
        #expect(elapsed >= 180 && elapsed < 5000, "took \(elapsed) ms")
        #expect(bench.device.netCounters.receiveThrottled.load(ordering: .relaxed) >= 1)
        #expect(bench.device.netCounters.receiveDropped.load(ordering: .relaxed) == 0)
        let wakeups = bench.device.netCounters.wakeups.load(ordering: .relaxed)
        #expect(wakeups <= 16, "\(wakeups) wake-ups: a throttled, readable tap must not spin the worker")
    }

    @Test("A frame read into bounce (RX chains too small for a direct read) is also held until paid for")
    func receiveThrottledThroughBounce() throws {
        let bench = try NetBench(receiveLimiter: Self.operations(1, 100))
        try bench.activate(features: plainFeatures)
        defer { bench.device.reset() }
        // Chains smaller than the largest frame: the device reads into its bounce buffer.
        for _ in 0..<4 { bench.receive.addChain([bench.writable(600)]) }
        try bench.receiveNotification.signal()
        usleep(20_000)
        let start = MonotonicClock().now()
        for _ in 0..<3 { try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 200)) }
        let used = bench.waitForUsed(bench.receive, count: 3)
        #expect(used.count == 3)
        #expect(Self.milliseconds(since: start) >= 180)
    }

    @Test("Lifting the TX limit at run time releases a throttled queue at once; limiter settings record every update")
    func updateReleases() throws {
        let bench = try NetBench(transmitLimiter: Self.operations(1, 600_000))
        try bench.activate(features: plainFeatures)
        defer { bench.device.reset() }
        try Self.transmit(bench, count: 3)
        #expect(bench.tap.nextSent() != nil)
        #expect(bench.tap.nextSent(timeout: 100) == nil, "throttled for ten minutes")
        let bandwidth = TokenBucketConfiguration(size: 1 << 30, refillTimeMilliseconds: 1000)
        bench.device.updateRateLimiters(receive: RateLimiterUpdate(bandwidth: .replace(bandwidth)),
                                        transmit: RateLimiterUpdate(operations: .replace(TokenBucketConfiguration(size: 0, refillTimeMilliseconds: 0))))
        #expect(bench.tap.nextSent() != nil && bench.tap.nextSent() != nil)
        #expect(bench.device.rateLimiters.transmit.isUnlimited)
        #expect(bench.device.rateLimiters.receive == RateLimiterConfiguration(bandwidth: bandwidth))
    }

    @Test("A limiter set before activation applies from the first frame; reset and reactivation start with full buckets")
    func updateBeforeActivation() throws {
        let bench = try NetBench()
        bench.device.updateRateLimiters(receive: .none, transmit: RateLimiterUpdate(replacingWith: Self.operations(1, 600_000)))
        try bench.activate(features: plainFeatures)
        try Self.transmit(bench, count: 2)
        #expect(bench.tap.nextSent() != nil)
        #expect(bench.tap.nextSent(timeout: 100) == nil)
        bench.device.reset()
    }
}
