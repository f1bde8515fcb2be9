/// One guest connection to MMDS's port 80: a passive-open TCP endpoint
/// (RFC 9293) cut down for a point-to-point link that seldom loses and
/// never reorders frames. In-order data only (anything else is dropped
/// and answered with an ACK), flow control by both windows, no congestion
/// control, no window scaling, SACK or timestamps (the SYN-ACK offers
/// none, so the guest uses none). Requests are buffered up to
/// `requestCapacity` bytes; one response is in flight at a time, and the
/// next request is read once the guest has acknowledged it all.
struct TCPConnection {
    enum State: Equatable {
        case synReceived, established, closeWait, lastAck, finWait1, finWait2, closing, timeWait, closed
    }

    /// Bytes of request the connection buffers (the receive window).
    static let requestCapacity = 4096
    /// The most payload in one segment: a 1500-byte MTU minus IPv4 and TCP headers.
    static let maximumSegmentSize = 1460
    /// RFC 9293's default when the SYN has no MSS option.
    static let defaultPeerSegmentSize = 536
    static let initialRetransmitTimeout: UInt64 = 500
    static let maximumRetransmitTimeout: UInt64 = 8000
    static let maximumRetransmissions = 8
    /// How long a closed connection lingers to re-acknowledge a repeated FIN.
    static let timeWaitDuration: UInt64 = 2000
    /// Idle this long, a connection may be evicted to make room for a new one.
    static let evictionIdleTime: UInt64 = 10_000

    let peerMAC: [UInt8]
    let peer: IPv4Address
    let peerPort: UInt16
    private(set) var state = State.synReceived

    // Receive side.
    let initialReceive: UInt32
    private(set) var receiveNext: UInt32
    var request: [UInt8] = []
    /// The guest's FIN has been taken in.
    private(set) var finReceived = false
    /// Data after a request that ends the connection is acknowledged and dropped.
    private(set) var discardingInput = false

    // Send side. `outgoing` holds the response bytes not yet acknowledged;
    // its first byte has sequence number `outgoingSequence`.
    let initialSend: UInt32
    private(set) var synAcknowledged = false
    private(set) var synAckDue = true
    private(set) var outgoing: [UInt8] = []
    private(set) var outgoingSequence: UInt32
    /// Bytes of `outgoing` sent (rewound to 0 to retransmit) and the most ever sent.
    private(set) var sentCount = 0
    private(set) var highestSentCount = 0
    private(set) var finWanted = false
    private(set) var finInFlight = false
    private(set) var finEverSent = false
    private(set) var finAcknowledged = false
    private(set) var peerWindow: UInt32
    let peerSegmentSize: Int
    private(set) var acknowledgmentDue = false
    /// A segment was unacceptable in SYN-RECEIVED: answer with this RST.
    private(set) var resetDue: UInt32?
    /// The connection gave up (request too large, retransmissions exhausted): send RST and forget it.
    private(set) var aborting = false
    private var duplicateAcknowledgments = 0

    // Timing (milliseconds).
    private(set) var lastReceived: UInt64
    private var lastTransmitted: UInt64
    private var retransmitTimeout = TCPConnection.initialRetransmitTimeout
    private var retransmissions = 0
    private var closedAt: UInt64 = 0

    /// A connection for `syn`, which must be a SYN without ACK, RST or FIN.
    init(syn: IncomingSegment, initialSequence: UInt32, now: UInt64) {
        peerMAC = syn.sourceMAC
        peer = syn.source
        peerPort = syn.sourcePort
        initialReceive = syn.sequence
        receiveNext = syn.sequence &+ 1
        initialSend = initialSequence
        outgoingSequence = initialSequence &+ 1
        peerWindow = UInt32(syn.window)
        peerSegmentSize = max(64, min(Int(syn.maximumSegmentSize ?? UInt16(Self.defaultPeerSegmentSize)), Self.maximumSegmentSize))
        lastReceived = now
        lastTransmitted = now
    }

    /// Whether the connection can be forgotten.
    var isFinished: Bool { state == .closed }

    /// Whether a new connection may take this one's slot.
    func isEvictable(now: UInt64) -> Bool {
        state == .timeWait || state == .closed || now &- lastReceived >= Self.evictionIdleTime
    }

    var receiveWindow: UInt16 { UInt16(max(0, Self.requestCapacity - request.count)) }

    /// Signed distance from `b` to `a` in sequence space.
    static func distance(_ a: UInt32, from b: UInt32) -> Int64 {
        Int64(Int32(bitPattern: a &- b))
    }

    // MARK: Receiving

    /// Takes in one segment for this connection, and answers the next
    /// request if one is complete and no response is in flight.
    mutating func receive(_ segment: IncomingSegment, now: UInt64, service: MetadataService) {
        lastReceived = now
        guard state != .closed, !aborting else { return }

        if segment.flags.contains(.rst) {
            // Only a reset inside the window is believed (RFC 5961 in spirit).
            let offset = Self.distance(segment.sequence, from: receiveNext)
            if offset >= 0, offset <= Int64(max(Int(receiveWindow), 1)) {
                state = .closed
            }
            return
        }
        if segment.flags.contains(.syn) {
            // A repeated SYN (its SYN-ACK was lost): answer again.
            if segment.sequence == initialReceive {
                if synAcknowledged { acknowledgmentDue = true } else { synAckDue = true }
            } else {
                acknowledgmentDue = true
            }
            return
        }
        guard segment.flags.contains(.ack) else { return }  // every segment after the SYN carries ACK

        if !synAcknowledged {
            guard segment.acknowledgment == initialSend &+ 1 else {
                resetDue = segment.acknowledgment
                return
            }
            synAcknowledged = true
            synAckDue = false
            state = .established
            retransmissions = 0
            retransmitTimeout = Self.initialRetransmitTimeout
        }
        guard processAcknowledgment(segment, now: now) else { return }
        processData(segment)
        serveRequests(service: service)
    }

    /// Returns false when the segment must be dropped (it acknowledges data never sent).
    mutating func processAcknowledgment(_ segment: IncomingSegment, now: UInt64) -> Bool {
        let acknowledged = Self.distance(segment.acknowledgment, from: outgoingSequence)
        let sentLimit = Int64(highestSentCount) + (finEverSent && !finAcknowledged ? 1 : 0)
        if acknowledged > sentLimit {
            acknowledgmentDue = true
            return false
        }
        if acknowledged > 0 {
            let dataAcknowledged = min(Int(acknowledged), outgoing.count)
            outgoing.removeFirst(dataAcknowledged)
            outgoingSequence = outgoingSequence &+ UInt32(dataAcknowledged)
            sentCount = max(0, sentCount - dataAcknowledged)
            highestSentCount = max(0, highestSentCount - dataAcknowledged)
            if Int(acknowledged) > dataAcknowledged, finEverSent, !finAcknowledged {
                // The FIN takes one sequence number.
                finAcknowledged = true
                finInFlight = false
                outgoingSequence = outgoingSequence &+ 1
                switch state {
                case .finWait1: state = .finWait2
                case .closing: enterTimeWait(now: now)
                case .lastAck: state = .closed
                default: break
                }
            }
            duplicateAcknowledgments = 0
            retransmissions = 0
            retransmitTimeout = Self.initialRetransmitTimeout
            lastTransmitted = now
        } else if acknowledged == 0, segment.payload.isEmpty, !segment.flags.contains(.fin),
                  UInt32(segment.window) == peerWindow, sentCount > 0 || finInFlight {
            // Three duplicate ACKs: the guest lost a segment; send again from the first unacknowledged byte.
            duplicateAcknowledgments += 1
            if duplicateAcknowledgments == 3 { rewind() }
        }
        if acknowledged >= 0 { peerWindow = UInt32(segment.window) }
        return true
    }

    mutating func processData(_ segment: IncomingSegment) {
        var payload = segment.payload
        var sequence = segment.sequence
        let offset = Self.distance(sequence, from: receiveNext)
        if offset > 0 {
            // Out of order: drop it; the duplicate ACK tells the guest where we are.
            if !payload.isEmpty || segment.flags.contains(.fin) { acknowledgmentDue = true }
            return
        }
        if offset < 0 {
            // Partly or wholly old: skip what we already have.
            let skip = Int(-offset)
            if skip > payload.count || (skip == payload.count && !segment.flags.contains(.fin)) {
                acknowledgmentDue = true
                return
            }
            payload = payload.dropFirst(skip)
            sequence = receiveNext
        }
        if !payload.isEmpty {
            if finReceived || discardingInput || !acceptsData {
                // Nothing more is read on this connection; keep the guest from resending.
                if !finReceived { receiveNext = receiveNext &+ UInt32(payload.count) }
            } else {
                let room = Self.requestCapacity - request.count
                let taken = min(room, payload.count)
                request.append(contentsOf: payload.prefix(taken))
                receiveNext = receiveNext &+ UInt32(taken)
                if taken < payload.count {
                    // Beyond our window: the rest is dropped and must be resent.
                    acknowledgmentDue = true
                    return
                }
            }
            acknowledgmentDue = true
        }
        if segment.flags.contains(.fin), !finReceived, sequence &+ UInt32(payload.count) == receiveNext {
            finReceived = true
            receiveNext = receiveNext &+ 1
            acknowledgmentDue = true
            switch state {
            case .established: state = .closeWait
            case .finWait1: state = .closing
            case .finWait2: enterTimeWait(now: lastReceived)
            default: break
            }
        } else if segment.flags.contains(.fin), finReceived {
            acknowledgmentDue = true  // a repeated FIN: our ACK was lost
        }
    }

    var acceptsData: Bool {
        state == .established || state == .finWait1 || state == .finWait2
    }

    /// Reads the next request once the previous response is acknowledged.
    mutating func serveRequests(service: MetadataService) {
        guard outgoing.isEmpty, !finWanted, !aborting, state == .established || state == .closeWait else { return }
        switch MetadataRequestParser.parse(request[...]) {
        case .incomplete:
            if request.count >= Self.requestCapacity {
                // The guest exceeded the largest request we take.
                service.countRefused()
                aborting = true
            } else if finReceived {
                close()
            }
        case let .request(parsed, consumed):
            request.removeFirst(consumed)
            respond(service.respond(to: parsed), minorVersion: parsed.minorVersion)
        case let .invalid(response, consumed):
            request.removeFirst(consumed)
            service.countRefused()
            respond(response, minorVersion: 1)
        }
    }

    mutating func respond(_ response: MetadataResponse, minorVersion: Int) {
        outgoing = response.serialized(minorVersion: minorVersion)
        sentCount = 0
        highestSentCount = 0
        if response.closesConnection {
            discardingInput = true
            request.removeAll()
            close()
        } else if finReceived, MetadataRequestParser.endOfHeaders(request[...]) == nil {
            close()
        }
    }

    /// Sends FIN once everything queued is sent.
    mutating func close() {
        finWanted = true
    }

    mutating func enterTimeWait(now: UInt64) {
        state = .timeWait
        closedAt = now
    }

    // MARK: Timers

    /// Retransmits after a timeout, gives up after too many, ends TIME-WAIT.
    mutating func expireTimers(now: UInt64) {
        if state == .timeWait, now &- closedAt >= Self.timeWaitDuration {
            state = .closed
            return
        }
        let waiting = sentCount > 0 || finInFlight || (!synAcknowledged && !synAckDue)
        guard waiting, now &- lastTransmitted >= retransmitTimeout else { return }
        retransmissions += 1
        if retransmissions > Self.maximumRetransmissions {
            aborting = true
            return
        }
        retransmitTimeout = min(retransmitTimeout * 2, Self.maximumRetransmitTimeout)
        rewind()
    }

    /// Go back to the first unacknowledged byte (or the SYN-ACK).
    mutating func rewind() {
        duplicateAcknowledgments = 0
        if !synAcknowledged {
            synAckDue = true
            return
        }
        sentCount = 0
        if finInFlight { finInFlight = false }
    }

    // MARK: Sending

    /// Whether `nextSegment` has something now.
    var hasSegmentToSend: Bool {
        if aborting || resetDue != nil || synAckDue && !synAcknowledged { return true }
        guard synAcknowledged, state != .closed else { return false }
        if sentCount < outgoing.count, UInt32(sentCount) < peerWindow { return true }
        if finWanted, !finInFlight, !finAcknowledged, sentCount == outgoing.count { return true }
        return acknowledgmentDue
    }

    /// The next segment to send, if any, updating what counts as sent.
    mutating func nextSegment(now: UInt64) -> OutgoingSegment? {
        func segment(_ sequence: UInt32, _ flags: TCPFlags, mss: UInt16? = nil, payload: ArraySlice<UInt8> = []) -> OutgoingSegment {
            OutgoingSegment(destinationMAC: peerMAC, destination: peer, destinationPort: peerPort, sequence: sequence,
                            acknowledgment: receiveNext, flags: flags, window: receiveWindow, maximumSegmentSize: mss, payload: payload)
        }
        if aborting {
            aborting = false
            state = .closed
            return segment(outgoingSequence &+ UInt32(sentCount), [.rst, .ack])
        }
        if let reset = resetDue {
            resetDue = nil
            var rst = segment(reset, [.rst])
            rst.acknowledgment = 0
            return rst
        }
        if !synAcknowledged {
            guard synAckDue else { return nil }
            synAckDue = false
            lastTransmitted = now
            return segment(initialSend, [.syn, .ack], mss: UInt16(Self.maximumSegmentSize))
        }
        guard state != .closed else { return nil }
        if sentCount < outgoing.count, UInt32(sentCount) < peerWindow {
            let room = Int(peerWindow) - sentCount
            let size = min(room, peerSegmentSize, outgoing.count - sentCount)
            let start = sentCount
            sentCount += size
            highestSentCount = max(highestSentCount, sentCount)
            acknowledgmentDue = false
            // The retransmission timer runs from the oldest unacknowledged segment (RFC 6298).
            if start == 0 { lastTransmitted = now }
            var flags: TCPFlags = [.ack]
            if sentCount == outgoing.count { flags.insert(.psh) }
            return segment(outgoingSequence &+ UInt32(start), flags, payload: outgoing[start..<(start + size)])
        }
        if finWanted, !finInFlight, !finAcknowledged, sentCount == outgoing.count {
            finInFlight = true
            finEverSent = true
            acknowledgmentDue = false
            lastTransmitted = now
            switch state {
            case .established: state = .finWait1
            case .closeWait: state = .lastAck
            default: break
            }
            return segment(outgoingSequence &+ UInt32(outgoing.count), [.fin, .ack])
        }
        if acknowledgmentDue {
            acknowledgmentDue = false
            return segment(outgoingSequence &+ UInt32(sentCount) &+ (finInFlight ? 1 : 0), [.ack])
        }
        return nil
    }
}
