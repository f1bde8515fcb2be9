import Synchronization

/// virtio-net's own counters, next to the generic `VirtioCounters`.
public final class VirtioNetCounters: Sendable {
    /// Frames handed to the driver.
    public let framesReceived = Atomic<UInt64>(0)
    /// Frames written to the tap.
    public let framesTransmitted = Atomic<UInt64>(0)
    /// Frames from the tap dropped: too large for the driver's buffers, or shorter than a header.
    public let receiveDropped = Atomic<UInt64>(0)
    /// Receive chains the device could not use (no room for a header, or readable) and returned empty.
    public let receiveChainsRefused = Atomic<UInt64>(0)
    /// Times the receive queue ran dry and the device stopped polling the tap until the driver added buffers.
    public let receiveStalls = Atomic<UInt64>(0)
    /// Frames from the driver dropped as malformed (bad header, too short or long).
    public let transmitMalformed = Atomic<UInt64>(0)
    /// Frames the tap refused (writev failed).
    public let transmitErrors = Atomic<UInt64>(0)
    /// Tap reads that failed with something other than "nothing to read".
    public let receiveErrors = Atomic<UInt64>(0)
    /// Times the worker thread woke up (notifications and tap readiness).
    public let wakeups = Atomic<UInt64>(0)
    /// Times the RX rate limiter held a frame back (or kept the tap unpolled).
    public let receiveThrottled = Atomic<UInt64>(0)
    /// Times the TX rate limiter held a chain back (or left a notification unserved).
    public let transmitThrottled = Atomic<UInt64>(0)

    /// Control requests answered VIRTIO_NET_ERR (unknown class or command, pairs out of range).
    public let controlRefused = Atomic<UInt64>(0)
    /// Control chains without a header or room for the ack (the queue breaks).
    public let controlMalformed = Atomic<UInt64>(0)

    public init() {}

    public var snapshot: [(name: String, value: UInt64)] {
        [("frames_received", framesReceived.load(ordering: .relaxed)),
         ("frames_transmitted", framesTransmitted.load(ordering: .relaxed)),
         ("receive_dropped", receiveDropped.load(ordering: .relaxed)),
         ("receive_chains_refused", receiveChainsRefused.load(ordering: .relaxed)),
         ("receive_stalls", receiveStalls.load(ordering: .relaxed)),
         ("transmit_malformed", transmitMalformed.load(ordering: .relaxed)),
         ("transmit_errors", transmitErrors.load(ordering: .relaxed)),
         ("receive_errors", receiveErrors.load(ordering: .relaxed)),
         ("wakeups", wakeups.load(ordering: .relaxed)),
         ("receive_throttled", receiveThrottled.load(ordering: .relaxed)),
         ("transmit_throttled", transmitThrottled.load(ordering: .relaxed)),
         ("control_refused", controlRefused.load(ordering: .relaxed)),
         ("control_malformed", controlMalformed.load(ordering: .relaxed))]
    }
}
