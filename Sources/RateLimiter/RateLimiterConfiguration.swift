/// One token bucket as users configure it (Firecracker's `TokenBucket`):
/// `size` tokens, refilled from empty to full over `refillTimeMilliseconds`,
/// plus `oneTimeBurst` extra tokens at the start that never come back.
public struct TokenBucketConfiguration: Equatable, Hashable, Sendable {
    /// Bytes or operations the bucket holds when full.
    public var size: UInt64
    /// Initial credit on top of `size`, spent first and not refilled.
    public var oneTimeBurst: UInt64
    /// Milliseconds to refill an empty bucket; the rate is size / refill time.
    public var refillTimeMilliseconds: UInt64

    /// The largest refill time whose nanoseconds fit in 64 bits (about 584 years).
    public static let maximumRefillTimeMilliseconds = UInt64.max / 1_000_000

    public init(size: UInt64, oneTimeBurst: UInt64 = 0, refillTimeMilliseconds: UInt64) {
        self.size = size
        self.oneTimeBurst = oneTimeBurst
        self.refillTimeMilliseconds = refillTimeMilliseconds
    }

    /// A size or refill time of zero means "no limit" (Firecracker's rule).
    public var limits: Bool { size > 0 && refillTimeMilliseconds > 0 }

    /// Tokens per second at the steady state.
    public var ratePerSecond: Double { Double(size) * 1000 / Double(refillTimeMilliseconds) }
}

/// A rate limiter as users configure it (Firecracker's `RateLimiter`): an
/// optional bandwidth bucket (bytes) and an optional operations bucket. An
/// absent bucket, or one whose size or refill time is 0, does not limit; `{}`
/// is an unlimited limiter.
public struct RateLimiterConfiguration: Equatable, Hashable, Sendable {
    public var bandwidth: TokenBucketConfiguration?
    public var operations: TokenBucketConfiguration?

    public static let unlimited = RateLimiterConfiguration()

    public init(bandwidth: TokenBucketConfiguration? = nil, operations: TokenBucketConfiguration? = nil) {
        self.bandwidth = bandwidth?.limits == true ? bandwidth : nil
        self.operations = operations?.limits == true ? operations : nil
    }

    /// Neither bucket limits anything.
    public var isUnlimited: Bool { bandwidth == nil && operations == nil }

    /// This configuration after `update`.
    public func applying(_ update: RateLimiterUpdate) -> RateLimiterConfiguration {
        RateLimiterConfiguration(bandwidth: update.bandwidth.applied(to: bandwidth),
                                 operations: update.operations.applied(to: operations))
    }
}

/// A change to a running limiter (Firecracker's PATCH semantics): each
/// bucket is left alone, replaced by a new full bucket, or removed.
public struct RateLimiterUpdate: Equatable, Sendable {
    public enum Bucket: Equatable, Sendable {
        case unchanged
        /// A new bucket, full; one that does not limit (size or refill time 0) removes the bucket.
        case replace(TokenBucketConfiguration)

        func applied(to current: TokenBucketConfiguration?) -> TokenBucketConfiguration? {
            switch self {
            case .unchanged: current
            case let .replace(bucket): bucket.limits ? bucket : nil
            }
        }

        /// A later update of the same bucket wins.
        func then(_ later: Bucket) -> Bucket { later == .unchanged ? self : later }
    }

    public var bandwidth: Bucket
    public var operations: Bucket

    public static let none = RateLimiterUpdate(bandwidth: .unchanged, operations: .unchanged)

    public init(bandwidth: Bucket = .unchanged, operations: Bucket = .unchanged) {
        self.bandwidth = bandwidth
        self.operations = operations
    }

    /// Replaces the whole limiter with `configuration` (absent buckets removed).
    public init(replacingWith configuration: RateLimiterConfiguration) {
        bandwidth = .replace(configuration.bandwidth ?? TokenBucketConfiguration(size: 0, refillTimeMilliseconds: 0))
        operations = .replace(configuration.operations ?? TokenBucketConfiguration(size: 0, refillTimeMilliseconds: 0))
    }

    public var isEmpty: Bool { self == .none }

    /// `self`, then `later`: what applying both in order does.
    public func then(_ later: RateLimiterUpdate) -> RateLimiterUpdate {
        RateLimiterUpdate(bandwidth: bandwidth.then(later.bandwidth), operations: operations.then(later.operations))
    }
}
