import Synchronization

/// virtio-vsock's own counters (GET /metrics lists them after the common
/// virtio counters), updated with relaxed atomics by the device's worker.
public final class VsockCounters: Sendable {
    /// Connections a host process opened with `CONNECT <port>` (sent to the guest as REQUEST).
    public let hostConnections = Atomic<UInt64>(0)
    /// Connections the guest opened to a `<uds_path>_<port>` listener.
    public let guestConnections = Atomic<UInt64>(0)
    /// Connections that reached the established state (both directions).
    public let established = Atomic<UInt64>(0)
    /// Connections removed (closed, reset, timed out).
    public let closed = Atomic<UInt64>(0)
    /// Connections open now.
    public let active = Atomic<UInt64>(0)
    /// Packets the device put on the RX queue / took from the TX queue.
    public let packetsToGuest = Atomic<UInt64>(0)
    public let packetsFromGuest = Atomic<UInt64>(0)
    /// RST packets sent to / received from the guest.
    public let resetsToGuest = Atomic<UInt64>(0)
    public let resetsFromGuest = Atomic<UInt64>(0)
    /// TX packets with a bad header (short, len too big or beyond the
    /// chain, wrong CIDs, type or op) and RX chains the device cannot use.
    public let malformedPackets = Atomic<UInt64>(0)
    /// Packets addressed to no connection (answered with RST).
    public let unknownConnectionPackets = Atomic<UInt64>(0)
    /// Guest data beyond the credit the device gave (the connection is reset).
    public let creditViolations = Atomic<UInt64>(0)
    /// Guest REQUESTs with nothing listening at `<uds_path>_<port>`.
    public let guestConnectFailures = Atomic<UInt64>(0)
    /// Host connections refused: bad or missing CONNECT line, limits, timeouts.
    public let hostConnectFailures = Atomic<UInt64>(0)
    /// Host-initiated connections the guest did not answer in time.
    public let connectTimeouts = Atomic<UInt64>(0)
    /// RSTs not sent because the queue of pending RSTs was full.
    public let droppedResets = Atomic<UInt64>(0)
    /// Host socket read/write failures (the connection is reset).
    public let hostSocketErrors = Atomic<UInt64>(0)

    public init() {}

    public var snapshot: [(name: String, value: UInt64)] {
        [("vsock_host_connections", hostConnections.load(ordering: .relaxed)),
         ("vsock_guest_connections", guestConnections.load(ordering: .relaxed)),
         ("vsock_established", established.load(ordering: .relaxed)),
         ("vsock_closed", closed.load(ordering: .relaxed)),
         ("vsock_active", active.load(ordering: .relaxed)),
         ("vsock_packets_to_guest", packetsToGuest.load(ordering: .relaxed)),
         ("vsock_packets_from_guest", packetsFromGuest.load(ordering: .relaxed)),
         ("vsock_resets_to_guest", resetsToGuest.load(ordering: .relaxed)),
         ("vsock_resets_from_guest", resetsFromGuest.load(ordering: .relaxed)),
         ("vsock_malformed_packets", malformedPackets.load(ordering: .relaxed)),
         ("vsock_unknown_connection_packets", unknownConnectionPackets.load(ordering: .relaxed)),
         ("vsock_credit_violations", creditViolations.load(ordering: .relaxed)),
         ("vsock_guest_connect_failures", guestConnectFailures.load(ordering: .relaxed)),
         ("vsock_host_connect_failures", hostConnectFailures.load(ordering: .relaxed)),
         ("vsock_connect_timeouts", connectTimeouts.load(ordering: .relaxed)),
         ("vsock_dropped_resets", droppedResets.load(ordering: .relaxed)),
         ("vsock_host_socket_errors", hostSocketErrors.load(ordering: .relaxed))]
    }

    func count(_ counter: borrowing Atomic<UInt64>, _ amount: UInt64 = 1) {
        counter.wrappingAdd(amount, ordering: .relaxed)
    }
}
