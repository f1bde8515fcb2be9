/// The few protocol layouts the MMDS network stack reads and writes:
/// Ethernet II, ARP for IPv4 over Ethernet, IPv4 without options, TCP.
/// Readers take whole frames and check every length before reading.
enum Wire {
    static let ethernetHeaderLength = 14
    static let arpLength = 28
    static let ipv4HeaderLength = 20
    static let tcpHeaderLength = 20

    static let etherTypeIPv4: UInt16 = 0x0800
    static let etherTypeARP: UInt16 = 0x0806
    static let protocolTCP: UInt8 = 6

    static func u16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
        UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    static func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8 | UInt32(bytes[offset + 3])
    }

    static func put16(_ value: UInt16, into bytes: inout [UInt8], at offset: Int) {
        bytes[offset] = UInt8(truncatingIfNeeded: value >> 8)
        bytes[offset + 1] = UInt8(truncatingIfNeeded: value)
    }

    static func put32(_ value: UInt32, into bytes: inout [UInt8], at offset: Int) {
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> UInt32(24 - 8 * index)) }
    }

    /// The ones'-complement sum of `bytes` as 16-bit big-endian words (an
    /// odd last byte is padded with zero), not yet folded or complemented.
    static func sum(_ bytes: ArraySlice<UInt8>, initial: UInt64 = 0) -> UInt64 {
        var total = initial
        var index = bytes.startIndex
        while index + 1 < bytes.endIndex {
            total &+= UInt64(bytes[index]) << 8 | UInt64(bytes[index + 1])
            index += 2
        }
        if index < bytes.endIndex { total &+= UInt64(bytes[index]) << 8 }
        return total
    }

    /// Folds a sum to 16 bits and complements it: the checksum field value.
    static func checksum(_ total: UInt64) -> UInt16 {
        var folded = total
        while folded >> 16 != 0 { folded = (folded & 0xFFFF) &+ (folded >> 16) }
        return ~UInt16(truncatingIfNeeded: folded)
    }

    /// The TCP pseudo-header's contribution (RFC 793 section 3.1).
    static func pseudoHeaderSum(source: IPv4Address, destination: IPv4Address, length: Int) -> UInt64 {
        UInt64(source.value >> 16) + UInt64(source.value & 0xFFFF) + UInt64(destination.value >> 16)
            + UInt64(destination.value & 0xFFFF) + UInt64(protocolTCP) + UInt64(length)
    }
}

/// TCP header flags.
struct TCPFlags: OptionSet, Equatable, Sendable {
    let rawValue: UInt8
    static let fin = TCPFlags(rawValue: 0x01)
    static let syn = TCPFlags(rawValue: 0x02)
    static let rst = TCPFlags(rawValue: 0x04)
    static let psh = TCPFlags(rawValue: 0x08)
    static let ack = TCPFlags(rawValue: 0x10)
}

/// A TCP segment from the guest, already checked.
struct IncomingSegment: Equatable, Sendable {
    var sourceMAC: [UInt8]
    var source: IPv4Address
    var sourcePort: UInt16
    var destinationPort: UInt16
    var sequence: UInt32
    var acknowledgment: UInt32
    var flags: TCPFlags
    var window: UInt16
    /// The MSS option, if the segment carried one.
    var maximumSegmentSize: UInt16?
    var payload: ArraySlice<UInt8>

    /// Sequence space the segment occupies: payload, plus one each for SYN and FIN.
    var sequenceLength: UInt32 {
        UInt32(payload.count) + (flags.contains(.syn) ? 1 : 0) + (flags.contains(.fin) ? 1 : 0)
    }
}

/// A TCP segment for the guest.
struct OutgoingSegment: Equatable, Sendable {
    var destinationMAC: [UInt8]
    var destination: IPv4Address
    var destinationPort: UInt16
    var sequence: UInt32
    var acknowledgment: UInt32
    var flags: TCPFlags
    var window: UInt16
    /// Sent as an MSS option (SYN-ACK only).
    var maximumSegmentSize: UInt16?
    var payload: ArraySlice<UInt8> = []
}

/// Why an intercepted frame was dropped.
enum FrameProblem: Error, Equatable {
    /// Too short, or lengths that do not add up.
    case malformed
    case badChecksum
    /// A fragment, IPv4 options we do not parse, a protocol other than TCP.
    case unsupported
}

enum PacketReader {
    /// Parses an intercepted IPv4 frame carrying TCP. `verifyTCPChecksum`
    /// is false when the guest left the checksum to the device (NEEDS_CSUM).
    static func tcpSegment(frame: [UInt8], verifyTCPChecksum: Bool) -> Result<(IncomingSegment, destination: IPv4Address), FrameProblem> {
        let ip = Wire.ethernetHeaderLength
        guard frame.count >= ip + Wire.ipv4HeaderLength else { return .failure(.malformed) }
        let versionAndLength = frame[ip]
        let headerLength = Int(versionAndLength & 0x0F) * 4
        guard versionAndLength >> 4 == 4, headerLength >= Wire.ipv4HeaderLength else { return .failure(.malformed) }
        let totalLength = Int(Wire.u16(frame, ip + 2))
        guard totalLength >= headerLength, ip + totalLength <= frame.count else { return .failure(.malformed) }
        guard Wire.checksum(Wire.sum(frame[ip..<(ip + headerLength)])) == 0 else { return .failure(.badChecksum) }
        // More-fragments flag or a fragment offset: MMDS does not reassemble.
        guard Wire.u16(frame, ip + 6) & 0x3FFF == 0 else { return .failure(.unsupported) }
        guard frame[ip + 9] == Wire.protocolTCP else { return .failure(.unsupported) }
        let source = IPv4Address(Wire.u32(frame, ip + 12))
        let destination = IPv4Address(Wire.u32(frame, ip + 16))

        let tcp = ip + headerLength
        let segmentLength = totalLength - headerLength
        guard segmentLength >= Wire.tcpHeaderLength else { return .failure(.malformed) }
        let dataOffset = Int(frame[tcp + 12] >> 4) * 4
        guard dataOffset >= Wire.tcpHeaderLength, dataOffset <= segmentLength else { return .failure(.malformed) }
        if verifyTCPChecksum {
            let total = Wire.sum(frame[tcp..<(tcp + segmentLength)],
                                 initial: Wire.pseudoHeaderSum(source: source, destination: destination, length: segmentLength))
            guard Wire.checksum(total) == 0 else { return .failure(.badChecksum) }
        }
        var mss: UInt16?
        var option = tcp + Wire.tcpHeaderLength
        let optionsEnd = tcp + dataOffset
        while option < optionsEnd {
            let kind = frame[option]
            if kind == 0 { break }  // end of options
            if kind == 1 { option += 1; continue }  // no-op
            guard option + 1 < optionsEnd else { break }
            let length = Int(frame[option + 1])
            guard length >= 2, option + length <= optionsEnd else { break }
            if kind == 2, length == 4 { mss = Wire.u16(frame, option + 2) }
            option += length
        }
        let segment = IncomingSegment(
            sourceMAC: Array(frame[6..<12]), source: source,
            sourcePort: Wire.u16(frame, tcp), destinationPort: Wire.u16(frame, tcp + 2),
            sequence: Wire.u32(frame, tcp + 4), acknowledgment: Wire.u32(frame, tcp + 8),
            flags: TCPFlags(rawValue: frame[tcp + 13] & 0x3F), window: Wire.u16(frame, tcp + 14),
            maximumSegmentSize: mss, payload: frame[(tcp + dataOffset)..<(tcp + segmentLength)])
        return .success((segment, destination))
    }
}

enum PacketWriter {
    /// Ethernet + IPv4 + TCP, checksums filled in.
    static func frame(for segment: OutgoingSegment, from address: IPv4Address, mac: [UInt8], identification: UInt16) -> [UInt8] {
        let optionsLength = segment.maximumSegmentSize == nil ? 0 : 4
        let tcpLength = Wire.tcpHeaderLength + optionsLength + segment.payload.count
        let ipLength = Wire.ipv4HeaderLength + tcpLength
        var frame = [UInt8](repeating: 0, count: Wire.ethernetHeaderLength + ipLength)
        frame.replaceSubrange(0..<6, with: segment.destinationMAC.prefix(6))
        frame.replaceSubrange(6..<12, with: mac.prefix(6))
        Wire.put16(Wire.etherTypeIPv4, into: &frame, at: 12)

        let ip = Wire.ethernetHeaderLength
        frame[ip] = 0x45
        Wire.put16(UInt16(ipLength), into: &frame, at: ip + 2)
        Wire.put16(identification, into: &frame, at: ip + 4)
        Wire.put16(0x4000, into: &frame, at: ip + 6)  // don't fragment
        frame[ip + 8] = 1  // TTL 1, as Firecracker's MMDS: the answer is for the link only
        frame[ip + 9] = Wire.protocolTCP
        Wire.put32(address.value, into: &frame, at: ip + 12)
        Wire.put32(segment.destination.value, into: &frame, at: ip + 16)
        Wire.put16(Wire.checksum(Wire.sum(frame[ip..<(ip + Wire.ipv4HeaderLength)])), into: &frame, at: ip + 10)

        let tcp = ip + Wire.ipv4HeaderLength
        Wire.put16(MMDSNetworkStack.port, into: &frame, at: tcp)
        Wire.put16(segment.destinationPort, into: &frame, at: tcp + 2)
        Wire.put32(segment.sequence, into: &frame, at: tcp + 4)
        Wire.put32(segment.flags.contains(.ack) ? segment.acknowledgment : 0, into: &frame, at: tcp + 8)
        frame[tcp + 12] = UInt8((Wire.tcpHeaderLength + optionsLength) / 4) << 4
        frame[tcp + 13] = segment.flags.rawValue
        Wire.put16(segment.window, into: &frame, at: tcp + 14)
        if let mss = segment.maximumSegmentSize {
            frame[tcp + 20] = 2
            frame[tcp + 21] = 4
            Wire.put16(mss, into: &frame, at: tcp + 22)
        }
        let dataStart = tcp + Wire.tcpHeaderLength + optionsLength
        frame.replaceSubrange(dataStart..<(dataStart + segment.payload.count), with: segment.payload)
        let total = Wire.sum(frame[tcp...], initial: Wire.pseudoHeaderSum(source: address, destination: segment.destination, length: tcpLength))
        Wire.put16(Wire.checksum(total), into: &frame, at: tcp + 16)
        return frame
    }

    /// An ARP reply telling `requester` that `address` is at `mac`.
    static func arpReply(to requesterMAC: [UInt8], requester: IPv4Address, address: IPv4Address, mac: [UInt8]) -> [UInt8] {
        var frame = [UInt8](repeating: 0, count: Wire.ethernetHeaderLength + Wire.arpLength)
        frame.replaceSubrange(0..<6, with: requesterMAC.prefix(6))
        frame.replaceSubrange(6..<12, with: mac.prefix(6))
        Wire.put16(Wire.etherTypeARP, into: &frame, at: 12)
        let arp = Wire.ethernetHeaderLength
        Wire.put16(1, into: &frame, at: arp)  // Ethernet
        Wire.put16(Wire.etherTypeIPv4, into: &frame, at: arp + 2)
        frame[arp + 4] = 6
        frame[arp + 5] = 4
        Wire.put16(2, into: &frame, at: arp + 6)  // reply
        frame.replaceSubrange((arp + 8)..<(arp + 14), with: mac.prefix(6))
        Wire.put32(address.value, into: &frame, at: arp + 14)
        frame.replaceSubrange((arp + 18)..<(arp + 24), with: requesterMAC.prefix(6))
        Wire.put32(requester.value, into: &frame, at: arp + 24)
        return frame
    }
}
