import Synchronization

/// What MMDS did, for GET /metrics. The first names are Firecracker's
/// `mmds` metrics group; the last three are Swiftlet's own summary.
public final class MMDSCounters: Sendable {
    /// Frames addressed to MMDS (ARP for its address, IPv4 to it) taken out of the guest's TX path.
    public let framesIntercepted = Atomic<UInt64>(0)
    /// Intercepted frames that could not be used (malformed, bad checksum, not TCP, unexpected segment).
    public let interceptedErrors = Atomic<UInt64>(0)
    /// Unusual events: IPv4 other than TCP, fragments, segments out of order or outside the window.
    public let unusual = Atomic<UInt64>(0)
    /// Intercepted frames too short or odd to be Ethernet/ARP/IPv4.
    public let badEthernet = Atomic<UInt64>(0)
    /// GET requests that carried a token MMDS did not issue, or an expired one.
    public let invalidToken = Atomic<UInt64>(0)
    /// GET requests without a token.
    public let noToken = Atomic<UInt64>(0)
    /// Segments (and ARP requests) the stack took in.
    public let receivedSegments = Atomic<UInt64>(0)
    /// Frames handed to the guest, and their bytes.
    public let framesSent = Atomic<UInt64>(0)
    public let bytesSent = Atomic<UInt64>(0)
    /// Connections accepted and ended.
    public let connectionsCreated = Atomic<UInt64>(0)
    public let connectionsDestroyed = Atomic<UInt64>(0)
    /// HTTP requests answered, and those answered with an error status.
    public let requests = Atomic<UInt64>(0)
    public let errors = Atomic<UInt64>(0)

    public init() {}

    /// Name and value of each counter, Firecracker's names first.
    public var snapshot: [(name: String, value: UInt64)] {
        [("rx_accepted", framesIntercepted.load(ordering: .relaxed)),
         ("rx_accepted_err", interceptedErrors.load(ordering: .relaxed)),
         ("rx_accepted_unusual", unusual.load(ordering: .relaxed)),
         ("rx_bad_eth", badEthernet.load(ordering: .relaxed)),
         ("rx_invalid_token", invalidToken.load(ordering: .relaxed)),
         ("rx_no_token", noToken.load(ordering: .relaxed)),
         ("rx_count", receivedSegments.load(ordering: .relaxed)),
         ("tx_bytes", bytesSent.load(ordering: .relaxed)),
         ("tx_count", framesSent.load(ordering: .relaxed)),
         ("tx_errors", 0),
         ("tx_frames", framesSent.load(ordering: .relaxed)),
         ("connections_created", connectionsCreated.load(ordering: .relaxed)),
         ("connections_destroyed", connectionsDestroyed.load(ordering: .relaxed)),
         ("requests", requests.load(ordering: .relaxed)),
         ("errors", errors.load(ordering: .relaxed)),
         ("frames_intercepted", framesIntercepted.load(ordering: .relaxed))]
    }
}
