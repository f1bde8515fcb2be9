import Glibc
import HostSystem

/// Where a limiter reads the time: CLOCK_MONOTONIC in the VMM, a fake in tests.
public protocol RateLimiterClock: Sendable {
    /// Monotonic nanoseconds.
    func now() -> UInt64
}

public struct MonotonicClock: RateLimiterClock {
    public init() {}

    public func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}

/// What wakes a throttled device: a one-shot timer whose descriptor the
/// device's worker polls. `TimerFD` in the VMM, a recorder in tests.
public protocol RateLimiterTimer: AnyObject, Sendable {
    /// Polled for readability; -1 when there is nothing to poll.
    var descriptor: Int32 { get }
    /// Fires once after `nanoseconds`, replacing an earlier setting.
    func arm(nanoseconds: UInt64)
    func disarm()
    /// Consumes an expiry: true if the timer had fired.
    func acknowledge() -> Bool
}

/// The VMM's timer: a timerfd on CLOCK_MONOTONIC.
public final class MonotonicTimer: RateLimiterTimer {
    let timer: TimerFD

    public init() throws(SystemCallError) {
        timer = try TimerFD()
    }

    public var descriptor: Int32 { timer.descriptor.rawValue }

    public func arm(nanoseconds: UInt64) {
        // timerfd_settime on a valid descriptor with a valid value cannot
        // fail; were it to, the device would resume on its next notification.
        try? timer.arm(nanoseconds: nanoseconds)
    }

    public func disarm() {
        try? timer.disarm()
    }

    public func acknowledge() -> Bool {
        ((try? timer.consume()) ?? nil) != nil
    }
}

/// The kind of token a request spends.
public enum TokenKind: Sendable {
    case bytes
    case operations
}

/// Firecracker's rate limiter: a bandwidth bucket and an operations bucket,
/// either optional, and one timer. A device asks `consume` before serving a
/// request; when that fails the limiter is blocked, its timer is armed for
/// the moment enough tokens are back, and the device stops taking requests
/// until `timerFired` (its worker polls `descriptor`). Nothing spins.
///
/// Owned by one thread (the device's worker); not shared.
public struct RateLimiter: Sendable {
    public private(set) var bandwidth: TokenBucket?
    public private(set) var operations: TokenBucket?
    /// A consume failed (or overdrew) and the timer has not fired yet:
    /// every consume fails until it does.
    public private(set) var isBlocked = false
    let clock: any RateLimiterClock
    let timer: (any RateLimiterTimer)?

    /// The shortest wait armed, so that a nearly full bucket cannot make the
    /// worker wake thousands of times a second.
    public static let minimumWaitNanoseconds: UInt64 = 1_000_000

    /// `timer` may be nil only for a limiter that never limits (it cannot
    /// then be given buckets by `update`).
    public init(_ configuration: RateLimiterConfiguration, clock: any RateLimiterClock = MonotonicClock(), timer: (any RateLimiterTimer)?) {
        self.clock = clock
        self.timer = timer
        let now = clock.now()
        if timer != nil {
            bandwidth = configuration.bandwidth.flatMap { TokenBucket($0, now: now) }
            operations = configuration.operations.flatMap { TokenBucket($0, now: now) }
        }
    }

    /// No bucket: every consume succeeds. Inlinable: devices check it per
    /// request on their unlimited fast path.
    @inlinable public var isUnlimited: Bool { bandwidth == nil && operations == nil }

    /// What the buckets are configured with now.
    public var configuration: RateLimiterConfiguration {
        RateLimiterConfiguration(bandwidth: bandwidth?.configuration, operations: operations?.configuration)
    }

    /// The timer's descriptor, for the worker's epoll.
    public var descriptor: Int32 { timer?.descriptor ?? -1 }

    /// Takes `tokens` of `kind`. False (and blocked) when the bucket is short
    /// or the limiter is already blocked. A request larger than the bucket
    /// succeeds and blocks the limiter until the excess is repaid.
    public mutating func consume(_ tokens: UInt64, _ kind: TokenKind) -> Bool {
        guard !isBlocked else { return false }
        let now = clock.now()
        let reduction: TokenBucket.Reduction
        switch kind {
        case .bytes:
            guard var bucket = bandwidth else { return true }
            reduction = bucket.reduce(tokens, now: now)
            bandwidth = bucket
        case .operations:
            guard var bucket = operations else { return true }
            reduction = bucket.reduce(tokens, now: now)
            operations = bucket
        }
        switch reduction {
        case .taken:
            return true
        case let .insufficient(wait):
            block(nanoseconds: wait)
            return false
        case let .overdrawn(blockTime):
            block(nanoseconds: blockTime)
            return true
        }
    }

    /// One operation moving `bytes` (a block request, a frame): an
    /// operations token and `bytes` bandwidth tokens, or neither.
    public mutating func consume(operationOf bytes: UInt64) -> Bool {
        guard consume(1, .operations) else { return false }
        guard bytes == 0 || consume(bytes, .bytes) else {
            giveBack(1, .operations)
            return false
        }
        return true
    }

    /// Returns tokens taken for a request that was not served after all.
    public mutating func giveBack(_ tokens: UInt64, _ kind: TokenKind) {
        switch kind {
        case .bytes: bandwidth?.giveBack(tokens)
        case .operations: operations?.giveBack(tokens)
        }
    }

    mutating func block(nanoseconds: UInt64) {
        isBlocked = true
        timer?.arm(nanoseconds: max(nanoseconds, Self.minimumWaitNanoseconds))
    }

    /// The timer's descriptor was readable: consume the expiry and unblock.
    /// False for a spurious wake-up (the timer had not fired).
    @discardableResult
    public mutating func timerFired() -> Bool {
        guard timer?.acknowledge() == true else { return false }
        isBlocked = false
        return true
    }

    /// Applies a runtime change: a replaced bucket starts full (with its
    /// burst), a removed one stops limiting, the others keep their state. A
    /// blocked limiter is unblocked so the device retries at once under the
    /// new buckets (and blocks again if they are short).
    public mutating func update(_ update: RateLimiterUpdate) {
        guard !update.isEmpty, timer != nil else { return }
        let now = clock.now()
        if case let .replace(bucket) = update.bandwidth { bandwidth = TokenBucket(bucket, now: now) }
        if case let .replace(bucket) = update.operations { operations = TokenBucket(bucket, now: now) }
        if isBlocked {
            timer?.disarm()
            isBlocked = false
        }
    }
}
