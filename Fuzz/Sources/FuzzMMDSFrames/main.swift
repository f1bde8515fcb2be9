import FuzzSupport
import LeanJSON
import MMDS

// The MMDS network stack against a hostile guest: any sequence of frames
// to the MMDS address (ARP, IPv4, TCP with any flags, sequence numbers,
// options and payload, HTTP requests of any shape), with time passing in
// between. Whatever arrives, the stack must not crash, must keep at most
// 30 connections, and must run out of frames to send after a bounded
// number of them (no frame loop, no unbounded queue).
//
// Input: records of [control byte][length: 2 bytes, little-endian][frame].
// Control bit 0: the frame claims NEEDS_CSUM (TCP checksum not checked);
// bit 1: make the frame an IPv4/TCP packet to MMDS with a valid IPv4
// header checksum (so mutations reach TCP and HTTP); bits 2-7: milliseconds
// to advance the clock before the frame, times 50.

let service = MetadataService(tokenKey: [UInt8](repeating: 1, count: 32), clock: { 0 })
_ = try? service.put(JSONParser.parse(#"{"latest": {"meta-data": {"ami-id": "ami-12345678", "list": ["a", "b"]}}, "big": "\#(String(repeating: "x", count: 4000))"}"#))

func fixUp(_ frame: inout [UInt8], address: IPv4Address) {
    guard frame.count >= 34 else { return }
    frame[12] = 0x08
    frame[13] = 0x00
    frame[14] = 0x45
    frame[23] = 6
    let octets = address.octets
    for index in 0..<4 { frame[30 + index] = octets[index] }
    frame[24] = 0
    frame[25] = 0
    var sum: UInt32 = 0
    for index in stride(from: 14, to: 34, by: 2) { sum += UInt32(frame[index]) << 8 | UInt32(frame[index + 1]) }
    while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
    let checksum = ~UInt16(sum)
    frame[24] = UInt8(checksum >> 8)
    frame[25] = UInt8(checksum & 0xFF)
}

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    let address = IPv4Address.defaultMMDS
    // Initial sequence 0, so seeds can acknowledge the SYN-ACK (1).
    var stack = MMDSNetworkStack(address: address, service: service, initialSequence: { 0 })
    var now: UInt64 = 1_000
    var offset = 0
    var frames = 0
    while offset + 3 <= bytes.count, frames < 256 {
        let control = bytes[offset]
        let length = Int(bytes[offset + 1]) | Int(bytes[offset + 2]) << 8
        offset += 3
        var frame = Array(bytes[offset..<min(bytes.count, offset + length)])
        offset += length
        frames += 1
        now += UInt64(control >> 2) * 50
        if control & 2 != 0 { fixUp(&frame, address: address) }
        if MMDSNetworkStack.isMetadataFrame(frame, address: address) {
            stack.receive(frame: frame, checksumOffloaded: control & 1 != 0, now: now)
        }
        precondition(stack.connectionCount <= MMDSNetworkStack.maximumConnections)
        // One request's response is at most a few dozen segments; a stack
        // that keeps producing frames is a bug.
        var sent = 0
        while let out = stack.nextFrame(now: now) {
            precondition(out.count >= 42 && out.count <= 1514, "frame of \(out.count) bytes")
            sent += 1
            precondition(sent < 200, "the stack does not stop sending")
        }
        precondition(!stack.hasFrameToSend)
    }
    return 0
}
