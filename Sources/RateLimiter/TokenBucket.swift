/// A token bucket with Firecracker's semantics. Time is passed in (monotonic
/// nanoseconds), so the arithmetic is testable without waiting.
///
/// The bucket starts full, with the one-time burst on top. A reduction is
/// served from the burst first, then from the budget; the budget refills
/// continuously at size / refill time and never exceeds size. A request
/// larger than the whole bucket is let through once, empties the bucket and
/// leaves a debt whose repayment time the caller must wait out.
public struct TokenBucket: Equatable, Sendable {
    public let configuration: TokenBucketConfiguration
    /// Burst tokens left (they are not refilled).
    public private(set) var oneTimeBurst: UInt64
    /// Tokens in the bucket now (at most `size`).
    public private(set) var budget: UInt64
    /// The time the budget was last brought up to date; refill fractions
    /// smaller than a token carry over by not moving this past them.
    private(set) var lastUpdate: UInt64
    /// size / (refill time in ns), reduced by their greatest common divisor so
    /// that the products below stay small.
    let processedCapacity: UInt64
    let processedRefillTime: UInt64
    let refillNanoseconds: UInt64

    public var size: UInt64 { configuration.size }

    /// nil when `configuration` does not limit (size or refill time 0) or its
    /// refill time overflows 64-bit nanoseconds.
    public init?(_ configuration: TokenBucketConfiguration, now: UInt64) {
        guard configuration.limits else { return nil }
        let (refillNanoseconds, overflow) = configuration.refillTimeMilliseconds.multipliedReportingOverflow(by: 1_000_000)
        guard !overflow else { return nil }
        let divisor = Self.greatestCommonDivisor(configuration.size, refillNanoseconds)
        self.configuration = configuration
        processedCapacity = configuration.size / divisor
        processedRefillTime = refillNanoseconds / divisor
        self.refillNanoseconds = refillNanoseconds
        oneTimeBurst = configuration.oneTimeBurst
        budget = configuration.size
        lastUpdate = now
    }

    static func greatestCommonDivisor(_ a: UInt64, _ b: UInt64) -> UInt64 {
        var (x, y) = (a, b)
        while y != 0 { (x, y) = (y, x % y) }
        return x
    }

    /// The outcome of `reduce`.
    public enum Reduction: Equatable, Sendable {
        /// The tokens were taken.
        case taken
        /// Not enough tokens; nothing was taken. Enough will be back in this many nanoseconds.
        case insufficient(waitNanoseconds: UInt64)
        /// More than the bucket holds was asked: everything was taken and the
        /// rest is a debt repaid after this many nanoseconds (no tokens may
        /// be taken until then).
        case overdrawn(blockNanoseconds: UInt64)
    }

    /// Brings the budget up to `now`.
    mutating func refill(now: UInt64) {
        guard now > lastUpdate else { return }
        let elapsed = now - lastUpdate
        if elapsed >= refillNanoseconds {
            // A whole refill time passed: full.
            budget = configuration.size
            lastUpdate = now
            return
        }
        // tokens = elapsed * capacity / refillTime, in 128 bits; < size since elapsed < the refill time.
        let tokens = Self.multiplyDivide(elapsed, processedCapacity, processedRefillTime)
        guard tokens > 0 else { return }
        // Advance by the time those tokens took, rounded up, so the fraction
        // of a token left over is neither lost nor counted twice.
        lastUpdate += Self.multiplyDivide(tokens, processedRefillTime, processedCapacity, roundingUp: true)
        let (sum, overflow) = budget.addingReportingOverflow(tokens)
        budget = overflow ? configuration.size : min(sum, configuration.size)
    }

    /// a * b / c in 128-bit arithmetic, saturating at UInt64.max.
    static func multiplyDivide(_ a: UInt64, _ b: UInt64, _ c: UInt64, roundingUp: Bool = false) -> UInt64 {
        let product = a.multipliedFullWidth(by: b)
        guard product.high < c else { return UInt64.max }
        let (quotient, remainder) = c.dividingFullWidth(product)
        return roundingUp && remainder != 0 && quotient < UInt64.max ? quotient + 1 : quotient
    }

    /// Nanoseconds the refill takes to produce `tokens`, less the part of a
    /// token already accumulated since `lastUpdate`.
    func timeToProduce(_ tokens: UInt64, now: UInt64) -> UInt64 {
        let full = Self.multiplyDivide(tokens, processedRefillTime, processedCapacity, roundingUp: true)
        let accumulated = now > lastUpdate ? now - lastUpdate : 0
        return full > accumulated ? full - accumulated : 0
    }

    /// Takes `tokens` at time `now`, or says how long until it could.
    public mutating func reduce(_ tokens: UInt64, now: UInt64) -> Reduction {
        var needed = tokens
        if oneTimeBurst > 0 {
            if oneTimeBurst >= needed {
                oneTimeBurst -= needed
                // The refill starts once the burst is spent.
                lastUpdate = now
                return .taken
            }
            needed -= oneTimeBurst
        }
        refill(now: now)
        if needed > configuration.size {
            // Firecracker lets a request larger than the bucket through once
            // and blocks for the time the excess takes to refill.
            oneTimeBurst = 0
            let debt = needed - budget
            budget = 0
            return .overdrawn(blockNanoseconds: timeToProduce(debt, now: now))
        }
        guard needed <= budget else {
            // The burst is kept for the retry: nothing is taken on failure.
            return .insufficient(waitNanoseconds: timeToProduce(needed - budget, now: now))
        }
        oneTimeBurst = 0
        budget -= needed
        return .taken
    }

    /// Puts `tokens` back (undoing a reduction that could not be used), up to
    /// the burst's initial size while it lasts, else up to `size`.
    public mutating func giveBack(_ tokens: UInt64) {
        if oneTimeBurst > 0 {
            let (sum, overflow) = oneTimeBurst.addingReportingOverflow(tokens)
            oneTimeBurst = overflow ? configuration.oneTimeBurst : min(sum, configuration.oneTimeBurst)
            return
        }
        let (sum, overflow) = budget.addingReportingOverflow(tokens)
        budget = overflow ? configuration.size : min(sum, configuration.size)
    }
}
