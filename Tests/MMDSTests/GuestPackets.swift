import Foundation
@testable import MMDS

/// The guest's side of the wire, written independently of the stack's own
/// packet code: builds the frames a guest would send and decodes (and
/// checks) the frames MMDS sends back.
enum GuestPackets {
    static let guestMAC: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    static let guestAddress = IPv4Address(10, 0, 0, 2)
    static let mmds = IPv4Address.defaultMMDS

    static func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
    static func be32(_ value: UInt32) -> [UInt8] { [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)] }

    static func onesComplement(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var index = 0
        while index < bytes.count {
            let high = UInt32(bytes[index]) << 8
            let low = index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0
            sum += high | low
            index += 2
        }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }

    /// An ARP request from the guest for `target`.
    static func arpRequest(for target: IPv4Address, operation: UInt16 = 1) -> [UInt8] {
        [UInt8](repeating: 0xFF, count: 6) + guestMAC + [0x08, 0x06]
            + [0, 1, 0x08, 0x00, 6, 4] + be16(operation) + guestMAC + guestAddress.octets + [UInt8](repeating: 0, count: 6) + target.octets
    }

    /// A TCP segment from the guest (port `sourcePort`) in an IPv4 frame.
    static func tcp(from sourcePort: UInt16 = 40000, to destination: IPv4Address = mmds, port: UInt16 = 80,
                    sequence: UInt32, acknowledgment: UInt32 = 0, flags: UInt8, window: UInt16 = 64240,
                    mss: UInt16? = nil, payload: [UInt8] = [], corruptTCP: Bool = false, corruptIP: Bool = false) -> [UInt8] {
        let options: [UInt8] = mss.map { [2, 4] + be16($0) } ?? []
        var tcp = be16(sourcePort) + be16(port) + be32(sequence) + be32(acknowledgment)
            + [UInt8((20 + options.count) / 4) << 4, flags] + be16(window) + [0, 0, 0, 0] + options + payload
        let pseudo = guestAddress.octets + destination.octets + [0, 6] + be16(UInt16(tcp.count))
        var checksum = onesComplement(pseudo + tcp)
        if corruptTCP { checksum ^= 0x5555 }
        tcp[16] = UInt8(checksum >> 8)
        tcp[17] = UInt8(checksum & 0xFF)
        var ip: [UInt8] = [0x45, 0] + be16(UInt16(20 + tcp.count)) + [0x12, 0x34, 0x40, 0, 64, 6, 0, 0] + guestAddress.octets + destination.octets
        var ipChecksum = onesComplement(ip)
        if corruptIP { ipChecksum ^= 0x00FF }
        ip[10] = UInt8(ipChecksum >> 8)
        ip[11] = UInt8(ipChecksum & 0xFF)
        return MMDSNetworkStack.macAddress + guestMAC + [0x08, 0x00] + ip + tcp
    }

    /// A TCP segment MMDS sent, decoded after checking both checksums and the addresses.
    struct Segment: Equatable {
        var destinationMAC: [UInt8]
        var sourcePort: UInt16
        var destinationPort: UInt16
        var sequence: UInt32
        var acknowledgment: UInt32
        var flags: UInt8
        var window: UInt16
        var mss: UInt16?
        var payload: [UInt8]
        var ttl: UInt8

        var syn: Bool { flags & 0x02 != 0 }
        var ack: Bool { flags & 0x10 != 0 }
        var fin: Bool { flags & 0x01 != 0 }
        var rst: Bool { flags & 0x04 != 0 }
        var text: String { String(decoding: payload, as: UTF8.self) }
    }

    enum DecodeError: Error { case notIPv4, badIPChecksum, badTCPChecksum, wrongAddress, short }

    static func decode(_ frame: [UInt8]) throws -> Segment {
        guard frame.count >= 54 else { throw DecodeError.short }
        guard frame[12] == 0x08, frame[13] == 0x00, frame[14] == 0x45 else { throw DecodeError.notIPv4 }
        let ip = Array(frame[14..<34])
        guard onesComplement(ip) == 0 else { throw DecodeError.badIPChecksum }
        let total = Int(ip[2]) << 8 | Int(ip[3])
        guard Array(ip[12..<16]) == mmds.octets, Array(ip[16..<20]) == guestAddress.octets, Array(frame[6..<12]) == MMDSNetworkStack.macAddress else {
            throw DecodeError.wrongAddress
        }
        let tcp = Array(frame[34..<(14 + total)])
        let pseudo = mmds.octets + guestAddress.octets + [0, 6] + be16(UInt16(tcp.count))
        guard onesComplement(pseudo + tcp) == 0 else { throw DecodeError.badTCPChecksum }
        let offset = Int(tcp[12] >> 4) * 4
        var mss: UInt16?
        if offset >= 24, tcp[20] == 2, tcp[21] == 4 { mss = UInt16(tcp[22]) << 8 | UInt16(tcp[23]) }
        func u32(_ at: Int) -> UInt32 { UInt32(tcp[at]) << 24 | UInt32(tcp[at + 1]) << 16 | UInt32(tcp[at + 2]) << 8 | UInt32(tcp[at + 3]) }
        return Segment(destinationMAC: Array(frame[0..<6]), sourcePort: UInt16(tcp[0]) << 8 | UInt16(tcp[1]),
                       destinationPort: UInt16(tcp[2]) << 8 | UInt16(tcp[3]), sequence: u32(4), acknowledgment: u32(8),
                       flags: tcp[13], window: UInt16(tcp[14]) << 8 | UInt16(tcp[15]), mss: mss, payload: Array(tcp[offset...]),
                       ttl: ip[8])
    }
}

/// A guest TCP client driving one connection through a stack, with a clock the test moves.
struct GuestClient {
    var stack: MMDSNetworkStack
    var now: UInt64 = 1_000
    let port: UInt16
    var sequence: UInt32 = 1_000_000
    var serverNext: UInt32 = 0
    var window: UInt16 = 64240

    init(stack: MMDSNetworkStack, port: UInt16 = 40000) {
        self.stack = stack
        self.port = port
    }

    mutating func send(_ frame: [UInt8], offloaded: Bool = false) {
        stack.receive(frame: frame, checksumOffloaded: offloaded, now: now)
    }

    /// Every frame the stack has now, decoded.
    mutating func drain(limit: Int = 1000) throws -> [GuestPackets.Segment] {
        var segments: [GuestPackets.Segment] = []
        while segments.count < limit, let frame = stack.nextFrame(now: now) {
            segments.append(try GuestPackets.decode(frame))
        }
        return segments
    }

    /// SYN, SYN-ACK, ACK. Returns the SYN-ACK.
    mutating func connect(mss: UInt16? = 1460) throws -> GuestPackets.Segment? {
        send(GuestPackets.tcp(from: port, sequence: sequence, flags: 0x02, window: window, mss: mss))
        guard let synAck = try drain().first, synAck.syn, synAck.ack else { return nil }
        sequence &+= 1
        serverNext = synAck.sequence &+ 1
        send(GuestPackets.tcp(from: port, sequence: sequence, acknowledgment: serverNext, flags: 0x10, window: window))
        return synAck
    }

    /// Sends `text` in segments of at most `chunk` bytes.
    mutating func write(_ text: String, chunk: Int = 1460) {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let piece = Array(bytes[offset..<min(offset + chunk, bytes.count)])
            send(GuestPackets.tcp(from: port, sequence: sequence, acknowledgment: serverNext, flags: 0x18, window: window, payload: piece))
            sequence &+= UInt32(piece.count)
            offset += piece.count
        }
    }

    /// Reads everything the stack sends, acknowledging each data segment,
    /// until nothing more comes. Returns the bytes and whether a FIN came.
    mutating func readAll(ackEach: Bool = true) throws -> (bytes: [UInt8], fin: Bool, segments: [GuestPackets.Segment]) {
        var bytes: [UInt8] = []
        var fin = false
        var all: [GuestPackets.Segment] = []
        for _ in 0..<1000 {
            let segments = try drain()
            if segments.isEmpty { break }
            all += segments
            for segment in segments {
                if segment.sequence == serverNext, !segment.payload.isEmpty {
                    bytes += segment.payload
                    serverNext &+= UInt32(segment.payload.count)
                }
                if segment.fin, segment.sequence &+ UInt32(segment.payload.count) == serverNext {
                    fin = true
                    serverNext &+= 1
                }
            }
            if ackEach {
                send(GuestPackets.tcp(from: port, sequence: sequence, acknowledgment: serverNext, flags: 0x10, window: window))
            }
        }
        return (bytes, fin, all)
    }

    /// The HTTP response in `bytes`: status, headers (lower-cased names) and body.
    static func response(_ bytes: [UInt8]) -> (status: Int, headers: [String: String], body: String)? {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { return nil }
        let lines = text[..<split.lowerBound].components(separatedBy: "\r\n")
        guard let first = lines.first, first.hasPrefix("HTTP/1."), let status = Int(first.split(separator: " ")[1]) else { return nil }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (status, headers, String(text[split.upperBound...]))
    }
}
