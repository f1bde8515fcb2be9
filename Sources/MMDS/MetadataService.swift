import Glibc
import LeanJSON
import Synchronization

/// The MMDS version the guest speaks: V1 serves GET with or without a
/// token (counting those without); V2 requires a session token.
public enum MMDSVersion: String, Equatable, Sendable, CaseIterable {
    case v1 = "V1"
    case v2 = "V2"
}

/// One VM's metadata service: the data store the API fills, the guest-facing
/// HTTP semantics, the V2 token authority and the counters. Shared by the
/// API thread and every network interface's MMDS stack; it lives as long as
/// the VMM process, so the data survives a guest reboot.
public final class MetadataService: Sendable {
    /// Firecracker's default: the API's default maximum payload size.
    public static let defaultSizeLimit = 51_200
    public static let tokenPath = "/latest/api/token"

    struct State: Sendable {
        var store: MetadataStore
        var version = MMDSVersion.v1
        var imdsCompatible = false
    }

    let state: Mutex<State>
    let tokens: TokenAuthority
    public let counters = MMDSCounters()
    /// Monotonic milliseconds; tests pass their own.
    let clock: @Sendable () -> UInt64

    public init(sizeLimit: Int = MetadataService.defaultSizeLimit, tokenKey: [UInt8] = TokenAuthority.randomKey(),
                clock: @escaping @Sendable () -> UInt64 = MetadataService.monotonicMilliseconds) {
        state = Mutex(State(store: MetadataStore(sizeLimit: sizeLimit)))
        tokens = TokenAuthority(key: tokenKey)
        self.clock = clock
    }

    public static func monotonicMilliseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1000 &+ UInt64(time.tv_nsec) / 1_000_000
    }

    // MARK: API side

    /// The contents, nil before the first PUT.
    public var contents: JSONValue? { state.withLock { $0.store.contents } }
    public var sizeLimit: Int { state.withLock { $0.store.sizeLimit } }
    public var version: MMDSVersion { state.withLock { $0.version } }
    public var imdsCompatible: Bool { state.withLock { $0.imdsCompatible } }

    public func put(_ value: JSONValue) throws(MetadataStoreError) {
        try state.withLock { (state) throws(MetadataStoreError) in try state.store.put(value) }
    }

    public func patch(_ value: JSONValue) throws(MetadataStoreError) {
        try state.withLock { (state) throws(MetadataStoreError) in try state.store.patch(value) }
    }

    /// `--mmds-size-limit`: applies to later PUT and PATCH requests.
    public func setSizeLimit(_ limit: Int) {
        state.withLock { $0.store.sizeLimit = limit }
    }

    /// PUT /mmds/config's version and imds_compat.
    public func configure(version: MMDSVersion, imdsCompatible: Bool) {
        state.withLock { state in
            state.version = version
            state.imdsCompatible = imdsCompatible
        }
    }

    // MARK: Guest side

    /// Answers one request from the guest.
    public func respond(to request: MetadataRequest) -> MetadataResponse {
        counters.requests.wrappingAdd(1, ordering: .relaxed)
        var response = answer(request)
        if response.status >= 400 { counters.errors.wrappingAdd(1, ordering: .relaxed) }
        if request.closesConnection { response.closesConnection = true }
        return response
    }

    /// Counts a request the parser refused (it never reaches `respond`).
    func countRefused() {
        counters.requests.wrappingAdd(1, ordering: .relaxed)
        counters.errors.wrappingAdd(1, ordering: .relaxed)
    }

    func answer(_ request: MetadataRequest) -> MetadataResponse {
        guard !request.path.isEmpty else { return MetadataResponse(status: 400, body: "Invalid URI.") }
        switch request.method {
        case "GET": return answerGet(request)
        case "PUT": return answerPut(request)
        default:
            return MetadataResponse(status: 405, body: "Not allowed HTTP method.",
                                    extraHeaders: [.init(name: "Allow", value: "GET, PUT")])
        }
    }

    func answerGet(_ request: MetadataRequest) -> MetadataResponse {
        let (version, imdsCompatible) = state.withLock { ($0.version, $0.imdsCompatible) }
        if let token = request.header("x-metadata-token", "x-aws-ec2-metadata-token") {
            if !tokens.isValid(token.value, now: clock()) {
                counters.invalidToken.wrappingAdd(1, ordering: .relaxed)
                if version == .v2 { return MetadataResponse(status: 401, body: "MMDS token not valid.") }
            }
        } else {
            counters.noToken.wrappingAdd(1, ordering: .relaxed)
            if version == .v2 {
                return MetadataResponse(status: 401, body: "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token.")
            }
        }
        let wantsJSON = Self.acceptsJSON(request.header("accept")?.value)
        let format: MetadataFormat = wantsJSON && !imdsCompatible ? .json : .imds
        let result = state.withLock { $0.store.value(at: request.path, format: format) }
        switch result {
        case let .success(body):
            return MetadataResponse(status: 200, contentType: format == .json ? "application/json" : "text/plain", body: body)
        case .failure(.notFound):
            return MetadataResponse(status: 404, body: "Resource not found: \(request.path).")
        case .failure(.unsupportedValueType):
            return MetadataResponse(status: 501, body: "Cannot retrieve value. The value has an unsupported type.")
        }
    }

    func answerPut(_ request: MetadataRequest) -> MetadataResponse {
        if let forwarded = request.header("x-forwarded-for") {
            return MetadataResponse(status: 400, body: "Invalid header. Reason: Unsupported header name. Key: \(forwarded.name)")
        }
        guard MetadataStore.collapsingSlashes(request.path) == Self.tokenPath else {
            return MetadataResponse(status: 404, body: "Resource not found: \(request.path).")
        }
        guard let ttlHeader = request.header("x-metadata-token-ttl-seconds", "x-aws-ec2-metadata-token-ttl-seconds") else {
            return MetadataResponse(status: 400, body: "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.")
        }
        guard let ttl = UInt32(ttlHeader.value) else {
            return MetadataResponse(status: 400, body: "Invalid header. Reason: Invalid value. Key:\(ttlHeader.name); Value:\(ttlHeader.value)")
        }
        guard TokenAuthority.ttlRange.contains(ttl) else {
            return MetadataResponse(status: 400, body: "Invalid time to live value provided for token: \(ttl). Please provide a value between \(TokenAuthority.ttlRange.lowerBound) and \(TokenAuthority.ttlRange.upperBound).")
        }
        let token = tokens.makeToken(ttlSeconds: ttl, now: clock())
        return MetadataResponse(status: 200, body: token, extraHeaders: [.init(name: ttlHeader.name, value: "\(ttl)")])
    }

    /// `Accept: application/json` (alone or first, parameters allowed);
    /// anything else, or no header, means IMDS text.
    static func acceptsJSON(_ accept: String?) -> Bool {
        guard let accept else { return false }
        let first = accept.split(separator: ",").first.map { String($0) } ?? ""
        let mediaType = first.split(separator: ";").first.map { String($0).trimmingSpaces.lowercased() } ?? ""
        return mediaType == "application/json"
    }
}
