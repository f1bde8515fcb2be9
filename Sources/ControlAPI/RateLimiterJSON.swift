import LeanJSON
import RateLimiter

/// Firecracker's `RateLimiter` and `TokenBucket` JSON:
///
///     {"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 1000},
///      "ops": {"size": 100, "refill_time": 1000}}
///
/// Both buckets are optional (`{}` is unlimited, as Kata always sends); a
/// bucket needs `size` and `refill_time` (milliseconds), `one_time_burst` is
/// optional; a size or refill time of 0 means that bucket does not limit.
/// `null` counts as absent everywhere.
enum RateLimiterJSON {
    static let fields = ["bandwidth", "ops"]
    static let bucketFields = ["size", "one_time_burst", "refill_time"]

    /// The limiter in member `key` of `fields` (PUT: the whole limiter);
    /// unlimited when absent.
    static func configuration(_ fields: JSONFields, key: String) throws(APIError) -> RateLimiterConfiguration {
        guard let limiter = try limiterFields(fields, key: key) else { return .unlimited }
        return RateLimiterConfiguration(bandwidth: try bucket(limiter, key: "bandwidth"), operations: try bucket(limiter, key: "ops"))
    }

    /// The change member `key` asks for (PATCH): each bucket given is
    /// replaced (a new full bucket, or removed when it does not limit); a
    /// bucket not given, or a limiter not given, is left as it is.
    static func update(_ fields: JSONFields, key: String) throws(APIError) -> RateLimiterUpdate {
        guard let limiter = try limiterFields(fields, key: key) else { return .none }
        return RateLimiterUpdate(bandwidth: try bucket(limiter, key: "bandwidth").map { .replace($0) } ?? .unchanged,
                                 operations: try bucket(limiter, key: "ops").map { .replace($0) } ?? .unchanged)
    }

    static func limiterFields(_ fields: JSONFields, key: String) throws(APIError) -> JSONFields? {
        guard let value = fields.value(key) else { return nil }
        let limiter = try JSONFields(value, context: "\(fields.context): '\(key)'")
        try limiter.allowOnly(Self.fields)
        return limiter
    }

    static func bucket(_ limiter: JSONFields, key: String) throws(APIError) -> TokenBucketConfiguration? {
        guard let value = limiter.value(key) else { return nil }
        let bucket = try JSONFields(value, context: "\(limiter.context).\(key)")
        try bucket.allowOnly(Self.bucketFields)
        return TokenBucketConfiguration(
            size: try bucket.requiredInteger("size", in: 0...UInt64.max),
            oneTimeBurst: try bucket.integer("one_time_burst", in: 0...UInt64.max) ?? 0,
            refillTimeMilliseconds: try bucket.requiredInteger("refill_time", in: 0...TokenBucketConfiguration.maximumRefillTimeMilliseconds))
    }

    /// GET /vm/config's form: `null` for an unlimited limiter, else both
    /// buckets with `null` for an absent one (and for a zero burst).
    static func json(_ configuration: RateLimiterConfiguration) -> String {
        guard !configuration.isUnlimited else { return "null" }
        func bucket(_ bucket: TokenBucketConfiguration?) -> String {
            guard let bucket else { return "null" }
            return JSONText.object([("size", "\(bucket.size)"),
                                    ("one_time_burst", bucket.oneTimeBurst == 0 ? "null" : "\(bucket.oneTimeBurst)"),
                                    ("refill_time", "\(bucket.refillTimeMilliseconds)")])
        }
        return JSONText.object([("bandwidth", bucket(configuration.bandwidth)), ("ops", bucket(configuration.operations))])
    }
}
