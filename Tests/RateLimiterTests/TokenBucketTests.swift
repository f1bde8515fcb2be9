import HostSystem
import Synchronization
import Testing
@testable import RateLimiter

/// A clock the test moves by hand.
final class FakeClock: RateLimiterClock {
    let time = Atomic<UInt64>(1_000_000_000)
    func now() -> UInt64 { time.load(ordering: .relaxed) }
    func advance(milliseconds: UInt64) { time.add(milliseconds * 1_000_000, ordering: .relaxed) }
    func advance(nanoseconds: UInt64) { time.add(nanoseconds, ordering: .relaxed) }
}

/// A timer that records what it was armed for and fires when told to.
final class FakeTimer: RateLimiterTimer {
    struct State { var armed: UInt64?; var fired = false; var arms: [UInt64] = [] }
    let state = Mutex(State())
    var descriptor: Int32 { -1 }
    func arm(nanoseconds: UInt64) { state.withLock { $0.armed = nanoseconds; $0.arms.append(nanoseconds); $0.fired = false } }
    func disarm() { state.withLock { $0.armed = nil; $0.fired = false } }
    func acknowledge() -> Bool {
        state.withLock { state in
            defer { state.fired = false }
            return state.fired
        }
    }
    /// The armed time passed.
    func fire() { state.withLock { $0.fired = $0.armed != nil; $0.armed = nil } }
    var armed: UInt64? { state.withLock { $0.armed } }
}

@Suite("Token bucket arithmetic")
struct TokenBucketTests {
    let t0: UInt64 = 5_000_000_000

    @Test("A bucket whose size or refill time is zero does not exist (no limit), as in Firecracker")
    func disabledBuckets() {
        #expect(TokenBucket(TokenBucketConfiguration(size: 0, oneTimeBurst: 1234, refillTimeMilliseconds: 1000), now: t0) == nil)
        #expect(TokenBucket(TokenBucketConfiguration(size: 100, oneTimeBurst: 1234, refillTimeMilliseconds: 0), now: t0) == nil)
        #expect(TokenBucket(TokenBucketConfiguration(size: 1, refillTimeMilliseconds: UInt64.max), now: t0) == nil)
        #expect(RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 0, refillTimeMilliseconds: 100)).isUnlimited)
    }

    @Test("The bucket starts full and refuses what it does not hold, taking nothing")
    func startsFull() throws {
        var bucket = try #require(TokenBucket(TokenBucketConfiguration(size: 1000, refillTimeMilliseconds: 1000), now: t0))
        #expect(bucket.budget == 1000)
        do { let outcome = bucket.reduce(123, now: t0); #expect(outcome == .taken) }
        #expect(bucket.budget == 877)
        // 1000 > 877: short by 123 tokens, which take 123 ms at 1000 tokens/s.
        do { let outcome = bucket.reduce(1000, now: t0); #expect(outcome == .insufficient(waitNanoseconds: 123_000_000)) }
        #expect(bucket.budget == 877)
    }

    @Test("Tokens refill continuously at size / refill time, fractions carried over, capped at size")
    func refill() throws {
        // 10 tokens per 1000 ms: one token every 100 ms.
        var bucket = try #require(TokenBucket(TokenBucketConfiguration(size: 10, refillTimeMilliseconds: 1000), now: t0))
        do { let outcome = bucket.reduce(10, now: t0); #expect(outcome == .taken) }
        #expect(bucket.budget == 0)
        do { let outcome = bucket.reduce(1, now: t0 + 99_999_999); #expect(outcome == .insufficient(waitNanoseconds: 1)) }
        do { let outcome = bucket.reduce(1, now: t0 + 100_000_000); #expect(outcome == .taken) }
        // 1.5 tokens' time: one token now, the half carried to the next.
        do { let outcome = bucket.reduce(2, now: t0 + 250_000_000); #expect(outcome == .insufficient(waitNanoseconds: 50_000_000)) }
        #expect(bucket.budget == 1)
        do { let outcome = bucket.reduce(2, now: t0 + 300_000_000); #expect(outcome == .taken) }
        // Long idle: full, not more.
        do { let outcome = bucket.reduce(11, now: t0 + 60_000_000_000); #expect(outcome == .overdrawn(blockNanoseconds: 100_000_000)) }
    }

    @Test("Refill arithmetic stays exact for large sizes and odd ratios (128-bit products)")
    func largeValues() throws {
        // 10 GB per 3 ms.
        var bucket = try #require(TokenBucket(TokenBucketConfiguration(size: 10_000_000_000, refillTimeMilliseconds: 3), now: t0))
        do { let outcome = bucket.reduce(10_000_000_000, now: t0); #expect(outcome == .taken) }
        do { let outcome = bucket.reduce(5_000_000_000, now: t0 + 1_500_000); #expect(outcome == .taken) }
        #expect(bucket.budget == 0)
        var slow = try #require(TokenBucket(TokenBucketConfiguration(size: 3, refillTimeMilliseconds: TokenBucketConfiguration.maximumRefillTimeMilliseconds), now: t0))
        do { let outcome = slow.reduce(3, now: t0); #expect(outcome == .taken) }
        guard case let .insufficient(wait) = slow.reduce(1, now: t0 + 1) else {
            Issue.record("expected a wait")
            return
        }
        #expect(wait > 6_000_000_000_000_000_000)
    }

    @Test("The one-time burst is spent first, is not refilled, and is kept when a request fails")
    func oneTimeBurst() throws {
        var bucket = try #require(TokenBucket(TokenBucketConfiguration(size: 1000, oneTimeBurst: 1100, refillTimeMilliseconds: 1000), now: t0))
        do { let outcome = bucket.reduce(1000, now: t0); #expect(outcome == .taken) }
        #expect(bucket.oneTimeBurst == 100 && bucket.budget == 1000)
        // 100 from the burst, 400 from the budget.
        do { let outcome = bucket.reduce(500, now: t0); #expect(outcome == .taken) }
        #expect(bucket.oneTimeBurst == 0 && bucket.budget == 600)
        do { let outcome = bucket.reduce(500, now: t0); #expect(outcome == .taken) }
        do { let outcome = bucket.reduce(500, now: t0); #expect(outcome == .insufficient(waitNanoseconds: 400_000_000)) }

        var kept = try #require(TokenBucket(TokenBucketConfiguration(size: 100, oneTimeBurst: 50, refillTimeMilliseconds: 1000), now: t0))
        #expect(kept.reduce(100, now: t0) == .taken)  // 50 burst + 50 budget
        #expect(kept.oneTimeBurst == 0 && kept.budget == 50)
        var kept2 = try #require(TokenBucket(TokenBucketConfiguration(size: 100, oneTimeBurst: 50, refillTimeMilliseconds: 1000), now: t0))
        do { let outcome = kept2.reduce(40, now: t0); #expect(outcome == .taken) }
        #expect(kept2.reduce(100, now: t0) == .taken) // 10 burst + 90 budget
        do { let outcome = kept2.reduce(20, now: t0); #expect(outcome == .insufficient(waitNanoseconds: 100_000_000)) }
        #expect(kept2.budget == 10)
    }

    @Test("A request larger than the bucket goes through once and leaves a debt (Firecracker's over-consumption)")
    func overdraw() throws {
        var bucket = try #require(TokenBucket(TokenBucketConfiguration(size: 1000, refillTimeMilliseconds: 1000), now: t0))
        // 2500 from a full bucket of 1000: 1500 owed, 1.5 refill times.
        do { let outcome = bucket.reduce(2500, now: t0); #expect(outcome == .overdrawn(blockNanoseconds: 1_500_000_000)) }
        #expect(bucket.budget == 0)
    }

    @Test("Given-back tokens return to the burst while it lasts, else to the budget, never beyond")
    func giveBack() throws {
        var bucket = try #require(TokenBucket(TokenBucketConfiguration(size: 1000, oneTimeBurst: 10, refillTimeMilliseconds: 1000), now: t0))
        do { let outcome = bucket.reduce(5, now: t0); #expect(outcome == .taken) }
        bucket.giveBack(100)
        #expect(bucket.oneTimeBurst == 10)
        do { let outcome = bucket.reduce(110, now: t0); #expect(outcome == .taken) }
        bucket.giveBack(50)
        #expect(bucket.budget == 950)
        bucket.giveBack(UInt64.max)
        #expect(bucket.budget == 1000)
    }
}

@Suite("Rate limiter with a fake clock and timer")
struct RateLimiterTests {
    @Test("No buckets: every consume succeeds and no timer is armed")
    func unlimited() {
        let timer = FakeTimer()
        var limiter = RateLimiter(.unlimited, clock: FakeClock(), timer: timer)
        #expect(limiter.isUnlimited)
        do { let outcome = limiter.consume(UInt64.max, .bytes); #expect(outcome) }
        do { let outcome = limiter.consume(operationOf: UInt64.max); #expect(outcome) }
        #expect(timer.armed == nil && !limiter.isBlocked)
        // Without a timer a limiter cannot limit, whatever it is given.
        var timerless = RateLimiter(RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 1, refillTimeMilliseconds: 1)), timer: nil)
        #expect(timerless.isUnlimited)
        timerless.update(RateLimiterUpdate(bandwidth: .replace(TokenBucketConfiguration(size: 1, refillTimeMilliseconds: 1))))
        #expect(timerless.isUnlimited)
    }

    @Test("A short bucket blocks the limiter, arms the timer for when the tokens are back, and the timer unblocks it")
    func blocksUntilTimer() {
        let clock = FakeClock(), timer = FakeTimer()
        // 1000 bytes per 100 ms.
        var limiter = RateLimiter(RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 1000, refillTimeMilliseconds: 100)),
                                  clock: clock, timer: timer)
        do { let outcome = limiter.consume(800, .bytes); #expect(outcome) }
        do { let outcome = limiter.consume(800, .bytes); #expect(!outcome) }
        #expect(limiter.isBlocked)
        // 600 bytes short: 60 ms.
        #expect(timer.armed == 60_000_000)
        // Blocked: even what would fit is refused until the timer fires.
        do { let outcome = limiter.consume(1, .bytes); #expect(!outcome) }
        do { let outcome = limiter.timerFired(); #expect(!outcome, "a wake-up before the expiry is spurious") }
        #expect(limiter.isBlocked)
        clock.advance(milliseconds: 60)
        timer.fire()
        do { let outcome = limiter.timerFired(); #expect(outcome) }
        #expect(!limiter.isBlocked)
        do { let outcome = limiter.consume(800, .bytes); #expect(outcome) }
    }

    @Test("A tiny deficit still waits at least a millisecond (no busy wake-ups)")
    func minimumWait() {
        let clock = FakeClock(), timer = FakeTimer()
        var limiter = RateLimiter(RateLimiterConfiguration(operations: TokenBucketConfiguration(size: 1_000_000, refillTimeMilliseconds: 1)),
                                  clock: clock, timer: timer)
        do { let outcome = limiter.consume(1_000_000, .operations); #expect(outcome) }
        do { let outcome = limiter.consume(1, .operations); #expect(!outcome) }
        #expect(timer.armed == RateLimiter.minimumWaitNanoseconds)
    }

    @Test("An operation takes an ops token and its bytes, or neither")
    func operationOfBytes() {
        let clock = FakeClock(), timer = FakeTimer()
        var limiter = RateLimiter(RateLimiterConfiguration(
            bandwidth: TokenBucketConfiguration(size: 4096, refillTimeMilliseconds: 1000),
            operations: TokenBucketConfiguration(size: 10, refillTimeMilliseconds: 1000)), clock: clock, timer: timer)
        do { let outcome = limiter.consume(operationOf: 4096); #expect(outcome) }
        do { let outcome = limiter.consume(operationOf: 512); #expect(!outcome) }
        // The ops token of the refused operation was given back.
        #expect(limiter.operations?.budget == 9)
        #expect(limiter.bandwidth?.budget == 0)
    }

    @Test("A request over the bucket size succeeds once and blocks for the excess's refill time")
    func overdrawBlocks() {
        let clock = FakeClock(), timer = FakeTimer()
        var limiter = RateLimiter(RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 1000, refillTimeMilliseconds: 100)),
                                  clock: clock, timer: timer)
        do { let outcome = limiter.consume(3000, .bytes); #expect(outcome) }
        #expect(limiter.isBlocked)
        #expect(timer.armed == 200_000_000)
    }

    @Test("Updates replace or remove single buckets, keep the others, and unblock a blocked limiter")
    func updates() {
        let clock = FakeClock(), timer = FakeTimer()
        let bandwidth = TokenBucketConfiguration(size: 1000, refillTimeMilliseconds: 100)
        let operations = TokenBucketConfiguration(size: 5, refillTimeMilliseconds: 100)
        var limiter = RateLimiter(RateLimiterConfiguration(bandwidth: bandwidth, operations: operations), clock: clock, timer: timer)
        do { let outcome = limiter.consume(1000, .bytes); #expect(outcome) }
        do { let outcome = limiter.consume(1, .bytes); #expect(!outcome) }
        // Only the ops bucket changes: the drained bandwidth bucket keeps its state.
        let newOperations = TokenBucketConfiguration(size: 50, oneTimeBurst: 7, refillTimeMilliseconds: 1000)
        limiter.update(RateLimiterUpdate(operations: .replace(newOperations)))
        #expect(!limiter.isBlocked && timer.armed == nil)
        #expect(limiter.configuration == RateLimiterConfiguration(bandwidth: bandwidth, operations: newOperations))
        #expect(limiter.operations?.oneTimeBurst == 7)
        do { let outcome = limiter.consume(1, .bytes); #expect(!outcome) }
        // A bucket of size 0 removes the limit.
        limiter.update(RateLimiterUpdate(bandwidth: .replace(TokenBucketConfiguration(size: 0, refillTimeMilliseconds: 0))))
        #expect(limiter.bandwidth == nil)
        do { let outcome = limiter.consume(UInt64.max, .bytes); #expect(outcome) }
        // Replacing everything with {} makes it unlimited.
        limiter.update(RateLimiterUpdate(replacingWith: .unlimited))
        #expect(limiter.isUnlimited)
    }

    @Test("Configurations apply updates as Firecracker's PATCH does; later updates win per bucket")
    func configurationUpdates() {
        let a = TokenBucketConfiguration(size: 1, refillTimeMilliseconds: 1)
        let b = TokenBucketConfiguration(size: 2, refillTimeMilliseconds: 2)
        let start = RateLimiterConfiguration(bandwidth: a, operations: a)
        #expect(start.applying(.none) == start)
        #expect(start.applying(RateLimiterUpdate(operations: .replace(b))) == RateLimiterConfiguration(bandwidth: a, operations: b))
        #expect(start.applying(RateLimiterUpdate(bandwidth: .replace(TokenBucketConfiguration(size: 0, refillTimeMilliseconds: 5))))
            == RateLimiterConfiguration(operations: a))
        let merged = RateLimiterUpdate(bandwidth: .replace(a)).then(RateLimiterUpdate(bandwidth: .replace(b), operations: .replace(a)))
        #expect(merged == RateLimiterUpdate(bandwidth: .replace(b), operations: .replace(a)))
        #expect(RateLimiterUpdate(bandwidth: .replace(b)).then(.none) == RateLimiterUpdate(bandwidth: .replace(b)))
    }

    @Test("Over a long run the limiter admits size / refill time per second, plus the initial bucket")
    func longRunRate() {
        let clock = FakeClock(), timer = FakeTimer()
        // 1 MB/s with a 100 ms bucket, 4 KiB requests, 10 simulated seconds.
        var limiter = RateLimiter(RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 100_000, refillTimeMilliseconds: 100)),
                                  clock: clock, timer: timer)
        let start = clock.now()
        var bytes: UInt64 = 0
        while clock.now() - start < 10_000_000_000 {
            if limiter.consume(4096, .bytes) {
                bytes += 4096
                continue
            }
            let wait = timer.armed ?? 0
            clock.advance(nanoseconds: wait)
            timer.fire()
            limiter.timerFired()
        }
        let expected: UInt64 = 100_000 + 10 * 1_000_000
        #expect(bytes <= expected && bytes >= expected - 4096, "admitted \(bytes) bytes")
    }

    @Test("The real timer: armed, it becomes readable after its time and is acknowledged once")
    func monotonicTimer() throws {
        let timer = try MonotonicTimer()
        #expect(!timer.acknowledge())
        timer.arm(nanoseconds: 2_000_000)
        #expect(!timer.acknowledge())
        let epoll = try Epoll()
        try epoll.add(timer.descriptor, token: 7)
        let events = try epoll.wait(timeout: 1000)
        #expect(events.map(\.token) == [7])
        #expect(timer.acknowledge())
        #expect(!timer.acknowledge())
        timer.arm(nanoseconds: 1_000_000_000)
        timer.disarm()
        #expect(try epoll.wait(timeout: 20).isEmpty)
    }
}
