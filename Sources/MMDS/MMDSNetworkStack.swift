/// MMDS's end of one network interface: answers ARP for the MMDS address
/// and speaks TCP on its port 80, turning the guest's HTTP requests into
/// `MetadataService` answers. The device hands it every frame the guest
/// sends to the MMDS address (`isMetadataFrame`) and asks it for frames to
/// deliver (`nextFrame`) before reading the tap.
///
/// Everything is bounded: 30 connections with 4 KiB of request each and one
/// response in flight, 100 pending resets, one pending ARP reply. Frames
/// going out are built on demand from connection state, so nothing queues
/// without bound however the guest behaves.
public struct MMDSNetworkStack: Sendable {
    /// The MAC address MMDS answers ARP with (Firecracker's).
    public static let macAddress: [UInt8] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01]
    public static let port: UInt16 = 80
    public static let maximumConnections = 30
    public static let maximumPendingResets = 100

    public let address: IPv4Address
    let service: MetadataService
    private(set) var connections: [TCPConnection] = []
    private var pendingResets: [OutgoingSegment] = []
    private var pendingARPReply: (mac: [UInt8], address: IPv4Address)?
    private var identification: UInt16 = 0
    /// Round-robin start, so one busy connection cannot starve the others.
    private var nextConnection = 0
    /// Where initial sequence numbers come from: random, or fixed for fuzzing.
    let initialSequence: @Sendable () -> UInt32

    public init(address: IPv4Address, service: MetadataService,
                initialSequence: @escaping @Sendable () -> UInt32 = { UInt32.random(in: 0...UInt32.max) }) {
        self.address = address
        self.service = service
        self.initialSequence = initialSequence
    }

    /// Open connections (at most `maximumConnections`).
    public var connectionCount: Int { connections.count }

    var counters: MMDSCounters { service.counters }

    // MARK: Classification

    /// Whether a frame from the guest is for MMDS: an ARP packet whose target
    /// is the MMDS address, or an IPv4 packet to it. Looks only at the first
    /// 42 bytes (Ethernet header and ARP body, or up to the IPv4 destination).
    /// 802.1Q-tagged frames are not recognised and go to the tap.
    public static func isMetadataFrame(_ head: some Collection<UInt8>, address: IPv4Address) -> Bool {
        let bytes = Array(head.prefix(Wire.ethernetHeaderLength + Wire.arpLength))
        guard bytes.count >= Wire.ethernetHeaderLength + Wire.ipv4HeaderLength else { return false }
        switch Wire.u16(bytes, 12) {
        case Wire.etherTypeARP:
            guard bytes.count >= Wire.ethernetHeaderLength + Wire.arpLength else { return false }
            return Wire.u32(bytes, Wire.ethernetHeaderLength + 24) == address.value
        case Wire.etherTypeIPv4:
            return Wire.u32(bytes, Wire.ethernetHeaderLength + 16) == address.value
        default:
            return false
        }
    }

    // MARK: Receiving

    /// Takes one frame for which `isMetadataFrame` held. It never reaches
    /// the tap, whatever it holds; frames the stack cannot use are counted
    /// and dropped. `checksumOffloaded`: the guest set NEEDS_CSUM, so the TCP
    /// checksum is not filled in yet and is not checked.
    public mutating func receive(frame: [UInt8], checksumOffloaded: Bool, now: UInt64) {
        counters.framesIntercepted.wrappingAdd(1, ordering: .relaxed)
        expireTimers(now: now)
        guard frame.count >= Wire.ethernetHeaderLength else {
            counters.badEthernet.wrappingAdd(1, ordering: .relaxed)
            return
        }
        switch Wire.u16(frame, 12) {
        case Wire.etherTypeARP: receiveARP(frame)
        case Wire.etherTypeIPv4: receiveIPv4(frame, checksumOffloaded: checksumOffloaded, now: now)
        default: counters.badEthernet.wrappingAdd(1, ordering: .relaxed)
        }
    }

    mutating func receiveARP(_ frame: [UInt8]) {
        let arp = Wire.ethernetHeaderLength
        guard frame.count >= arp + Wire.arpLength else {
            counters.badEthernet.wrappingAdd(1, ordering: .relaxed)
            return
        }
        // An ARP request for IPv4 over Ethernet; replies, gratuitous ARP and the rest are dropped.
        guard Wire.u16(frame, arp) == 1, Wire.u16(frame, arp + 2) == Wire.etherTypeIPv4, frame[arp + 4] == 6, frame[arp + 5] == 4,
              Wire.u16(frame, arp + 6) == 1, Wire.u32(frame, arp + 24) == address.value else {
            counters.interceptedErrors.wrappingAdd(1, ordering: .relaxed)
            return
        }
        counters.receivedSegments.wrappingAdd(1, ordering: .relaxed)
        // Only the latest request is answered (one reply is enough).
        pendingARPReply = (Array(frame[(arp + 8)..<(arp + 14)]), IPv4Address(Wire.u32(frame, arp + 14)))
    }

    mutating func receiveIPv4(_ frame: [UInt8], checksumOffloaded: Bool, now: UInt64) {
        let segment: IncomingSegment
        switch PacketReader.tcpSegment(frame: frame, verifyTCPChecksum: !checksumOffloaded) {
        case let .success((parsed, destination)):
            guard destination == address else {
                counters.interceptedErrors.wrappingAdd(1, ordering: .relaxed)
                return
            }
            segment = parsed
        case .failure(.unsupported):
            counters.unusual.wrappingAdd(1, ordering: .relaxed)
            return
        case .failure:
            counters.interceptedErrors.wrappingAdd(1, ordering: .relaxed)
            return
        }
        counters.receivedSegments.wrappingAdd(1, ordering: .relaxed)
        guard segment.destinationPort == Self.port else {
            // Nothing listens there: refuse, so the guest fails fast.
            counters.unusual.wrappingAdd(1, ordering: .relaxed)
            queueReset(answering: segment)
            return
        }
        let flags = segment.flags
        if let index = connections.firstIndex(where: { $0.peer == segment.source && $0.peerPort == segment.sourcePort }) {
            let isNewSYN = flags.contains(.syn) && !flags.contains(.ack) && !flags.contains(.rst)
                && segment.sequence != connections[index].initialReceive
            if isNewSYN {
                // The guest reuses the port for a new connection: the old one is gone.
                removeConnection(at: index)
            } else {
                connections[index].receive(segment, now: now, service: service)
                if connections[index].isFinished && !connections[index].hasSegmentToSend { removeConnection(at: index) }
                return
            }
        }
        guard flags.contains(.syn), !flags.contains(.ack), !flags.contains(.rst), !flags.contains(.fin) else {
            // Not part of any connection.
            counters.unusual.wrappingAdd(1, ordering: .relaxed)
            if !flags.contains(.rst) { queueReset(answering: segment) }
            return
        }
        if connections.count >= Self.maximumConnections {
            // Make room: a closed or idle connection goes, the least recently heard from first.
            guard let victim = connections.indices.filter({ connections[$0].isEvictable(now: now) })
                .min(by: { connections[$0].lastReceived < connections[$1].lastReceived }) else {
                // All busy: drop the SYN; the guest will try again.
                counters.unusual.wrappingAdd(1, ordering: .relaxed)
                return
            }
            removeConnection(at: victim)
        }
        connections.append(TCPConnection(syn: segment, initialSequence: initialSequence(), now: now))
        counters.connectionsCreated.wrappingAdd(1, ordering: .relaxed)
    }

    /// RFC 9293's reset for a segment that belongs to no connection.
    mutating func queueReset(answering segment: IncomingSegment) {
        guard pendingResets.count < Self.maximumPendingResets else { return }
        var reset = OutgoingSegment(destinationMAC: segment.sourceMAC, destination: segment.source, destinationPort: segment.sourcePort,
                                    sequence: 0, acknowledgment: 0, flags: [.rst], window: 0)
        if segment.flags.contains(.ack) {
            reset.sequence = segment.acknowledgment
        } else {
            reset.flags.insert(.ack)
            reset.acknowledgment = segment.sequence &+ segment.sequenceLength
        }
        pendingResets.append(reset)
    }

    mutating func removeConnection(at index: Int) {
        connections.remove(at: index)
        counters.connectionsDestroyed.wrappingAdd(1, ordering: .relaxed)
        if nextConnection > index { nextConnection -= 1 }
    }

    // MARK: Sending

    /// Runs retransmission and TIME-WAIT timers. The device calls the stack
    /// whenever it has work, so timers are checked then (as Firecracker's
    /// MMDS does) rather than by a timer of their own.
    public mutating func expireTimers(now: UInt64) {
        var index = 0
        while index < connections.count {
            connections[index].expireTimers(now: now)
            if connections[index].isFinished && !connections[index].hasSegmentToSend {
                removeConnection(at: index)
            } else {
                index += 1
            }
        }
    }

    /// Whether `nextFrame` has a frame now.
    public var hasFrameToSend: Bool {
        pendingARPReply != nil || !pendingResets.isEmpty || connections.contains { $0.hasSegmentToSend }
    }

    /// The next frame for the guest: an ARP reply, a reset, then the
    /// connections' segments in turn.
    public mutating func nextFrame(now: UInt64) -> [UInt8]? {
        let frame: [UInt8]
        if let reply = pendingARPReply {
            pendingARPReply = nil
            frame = PacketWriter.arpReply(to: reply.mac, requester: reply.address, address: address, mac: Self.macAddress)
        } else if !pendingResets.isEmpty {
            frame = build(pendingResets.removeFirst())
        } else if let segment = nextSegment(now: now) {
            frame = build(segment)
        } else {
            return nil
        }
        counters.framesSent.wrappingAdd(1, ordering: .relaxed)
        counters.bytesSent.wrappingAdd(UInt64(frame.count), ordering: .relaxed)
        return frame
    }

    mutating func nextSegment(now: UInt64) -> OutgoingSegment? {
        guard !connections.isEmpty else { return nil }
        for step in 0..<connections.count {
            let index = (nextConnection + step) % connections.count
            guard connections[index].hasSegmentToSend, let segment = connections[index].nextSegment(now: now) else { continue }
            nextConnection = index + 1
            if connections[index].isFinished && !connections[index].hasSegmentToSend { removeConnection(at: index) }
            return segment
        }
        return nil
    }

    mutating func build(_ segment: OutgoingSegment) -> [UInt8] {
        identification &+= 1
        return PacketWriter.frame(for: segment, from: address, mac: Self.macAddress, identification: identification)
    }
}
