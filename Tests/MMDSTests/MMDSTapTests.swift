import Glibc
import GuestMemory
import HostSystem
import LeanJSON
import Synchronization
import Testing
import Virtio
import VirtioTestSupport
@testable import MMDS
@testable import VirtioNet

/// A tap stand-in: a datagram socket pair keeps frame boundaries as a tap does.
final class PairTap: TapBackend {
    let device: OwnedFileDescriptor
    let peer: OwnedFileDescriptor
    let label = "pair"
    var descriptor: Int32 { device.rawValue }

    init() throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        device = OwnedFileDescriptor(adopting: pair[0])
        peer = OwnedFileDescriptor(adopting: pair[1])
    }

    func setOffloads(_ flags: UInt32) throws(VirtioNetError) {}

    func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        try systemCall("readv") { readv(device.rawValue, vectors.baseAddress, Int32(vectors.count)) }
    }

    func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        try systemCall("writev") { writev(device.rawValue, vectors.baseAddress, Int32(vectors.count)) }
    }

    /// What reached the host side, if anything (waits up to `milliseconds`).
    func sent(milliseconds: Int = 200) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 70_000)
        for _ in 0..<milliseconds {
            let count = buffer.withUnsafeMutableBytes { recv(peer.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if count >= 0 { return Array(buffer[..<count]) }
            usleep(1000)
        }
        return nil
    }
}

func readable(_ descriptor: Int32) -> Bool {
    var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
    return poll(&entry, 1, 0) == 1 && entry.revents & Int16(POLLIN) != 0
}

/// Calls the tap's send with a header and a frame, as the device's writev would.
func transmit(_ tap: any TapBackend, header: VirtioNetHeader = VirtioNetHeader(), _ frame: [UInt8]) throws -> Int {
    var bytes = header.bytes + frame
    return try bytes.withUnsafeMutableBytes { (raw) throws(SystemCallError) -> Int in
        // Two vectors: the header, then the frame, as the device passes them.
        let vectors = [iovec(iov_base: raw.baseAddress, iov_len: VirtioNetHeader.size),
                       iovec(iov_base: raw.baseAddress.map { $0 + VirtioNetHeader.size }, iov_len: raw.count - VirtioNetHeader.size)]
        return try vectors.withUnsafeBufferPointer { (buffer) throws(SystemCallError) -> Int in try tap.send(buffer) }
    }
}

/// Calls the tap's receive with room for a full frame; nil for "nothing to read".
func receiveFrame(_ tap: any TapBackend) throws -> [UInt8]? {
    var buffer = [UInt8](repeating: 0, count: 2048)
    let result = buffer.withUnsafeMutableBytes { raw in
        Result { () throws(SystemCallError) -> Int in
            var vector = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
            return try withUnsafePointer(to: &vector) { (pointer) throws(SystemCallError) -> Int in
                try tap.receive(into: UnsafeBufferPointer(start: pointer, count: 1))
            }
        }
    }
    switch result {
    case let .success(length): return Array(buffer[..<length])
    case let .failure(error) where error.errno == .wouldBlock: return nil
    case let .failure(error): throw error
    }
}

@Suite("MMDS in front of a tap", .serialized)
struct MMDSTapTests {
    static func service() throws -> MetadataService {
        let service = MetadataService()
        try service.put(JSONParser.parse(#"{"latest": {"meta-data": {"ami-id": "ami-12345678"}}}"#))
        return service
    }

    @Test("Frames to MMDS never reach the tap; its answers come out of receive first; other frames pass both ways")
    func interception() throws {
        let inner = try PairTap()
        let tap = try MMDSTap(wrapping: inner, address: .defaultMMDS, service: Self.service())
        #expect(!readable(tap.descriptor))

        let other = GuestPackets.tcp(to: IPv4Address(10, 0, 0, 1), sequence: 1, flags: 0x02)
        #expect(try transmit(tap, other) == 12 + other.count)
        #expect(inner.sent() == VirtioNetHeader().bytes + other)

        let arp = GuestPackets.arpRequest(for: .defaultMMDS)
        #expect(try transmit(tap, arp) == 12 + arp.count, "consumed as if written")
        #expect(inner.sent(milliseconds: 50) == nil, "the ARP request did not reach the tap")
        #expect(readable(tap.descriptor), "the worker wakes for the reply")
        let reply = try #require(try receiveFrame(tap))
        #expect(Array(reply.prefix(12)) == [UInt8](repeating: 0, count: 12))
        #expect(Array(reply[(12 + 6)..<(12 + 12)]) == MMDSNetworkStack.macAddress)
        #expect(!readable(tap.descriptor), "nothing left: the eventfd is quiet again")
        #expect(try receiveFrame(tap) == nil)

        // A frame from the host comes through.
        let incoming = VirtioNetHeader().bytes + other
        try inner.peer.writeAll(incoming)
        #expect(readable(tap.descriptor))
        #expect(try receiveFrame(tap) == incoming)
    }

    @Test("A TCP request through the tap is answered; NEEDS_CSUM frames are taken without a TCP checksum")
    func request() throws {
        let inner = try PairTap()
        let service = try Self.service()
        let tap = try MMDSTap(wrapping: inner, address: .defaultMMDS, service: service)
        let offloaded = VirtioNetHeader(flags: VirtioNetHeader.needsChecksum, checksumStart: 34, checksumOffset: 16)
        _ = try transmit(tap, header: offloaded, GuestPackets.tcp(sequence: 100, flags: 0x02, mss: 1460, corruptTCP: true))
        let synAck = try GuestPackets.decode(Array(try #require(try receiveFrame(tap)).dropFirst(12)))
        #expect(synAck.syn && synAck.acknowledgment == 101)
        _ = try transmit(tap, GuestPackets.tcp(sequence: 101, acknowledgment: synAck.sequence &+ 1, flags: 0x10))
        _ = try transmit(tap, GuestPackets.tcp(sequence: 101, acknowledgment: synAck.sequence &+ 1, flags: 0x18,
                                                payload: Array("GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n".utf8)))
        var text = ""
        while let frame = try receiveFrame(tap) {
            text += try GuestPackets.decode(Array(frame.dropFirst(12))).text
        }
        #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(text.hasSuffix("\r\n\r\nami-12345678"))
        #expect(inner.sent(milliseconds: 50) == nil)
        #expect(service.counters.framesIntercepted.load(ordering: .relaxed) == 3)
    }

    @Test("Through a virtio-net device: the worker answers ARP and SYN for MMDS from the RX queue and sends nothing to the tap; answers wait for RX buffers", arguments: [true, false])
    func throughDevice(buffersFirst: Bool) throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 8 << 20)])
        let receive = DriverQueue(memory: memory, size: 16, base: GuestAddress(0x10000))
        let transmitQueue = DriverQueue(memory: memory, size: 16, base: GuestAddress(0x400000))
        let inner = try PairTap()
        let tap = try MMDSTap(wrapping: inner, address: .defaultMMDS, service: Self.service())
        let device = VirtioNetDevice(tap: tap, mac: MACAddress(unchecked: GuestPackets.guestMAC), offloads: false)
        let interrupt = RecordingInterrupt()
        let receiveNotification = try EventFD(), transmitNotification = try EventFD()
        let features = VirtioFeature.version1 | VirtioNetFeature.mac | VirtioNetFeature.status
        try device.activate(VirtioActivation(memory: memory, features: features, queues: [
            VirtioQueueActivation(index: 0, queue: try receive.deviceQueue(features: features), notification: receiveNotification),
            VirtioQueueActivation(index: 1, queue: try transmitQueue.deviceQueue(features: features), notification: transmitNotification),
        ], interrupt: interrupt))
        defer { device.reset() }

        var buffers: [GuestAddress] = []
        func addReceiveBuffers() throws {
            for _ in 0..<4 {
                let address = receive.allocate(2048)
                buffers.append(address)
                receive.addChain([DriverQueue.Buffer(address: address, length: 2048, writable: true)])
            }
            try receiveNotification.signal()
        }
        if buffersFirst { try addReceiveBuffers() }
        for frame in [GuestPackets.arpRequest(for: .defaultMMDS), GuestPackets.tcp(sequence: 7, flags: 0x02, mss: 1460)] {
            let bytes = VirtioNetHeader().bytes + frame
            let address = transmitQueue.allocate(bytes.count)
            try memory.write(bytes: bytes, at: address)
            transmitQueue.addChain([DriverQueue.Buffer(address: address, length: UInt32(bytes.count), writable: false)])
        }
        try transmitNotification.signal()
        if !buffersFirst {
            // Both frames taken from the guest; the answers wait for receive buffers.
            for _ in 0..<2000 where transmitQueue.usedIndex < 2 { usleep(1000) }
            #expect(transmitQueue.usedIndex == 2)
            usleep(50_000)
            #expect(receive.usedIndex == 0)
            try addReceiveBuffers()
        }

        var used: [(head: UInt32, length: UInt32)] = []
        for _ in 0..<2000 where used.count < 2 {
            while let entry = receive.popUsed() { used.append(entry) }
            usleep(1000)
        }
        #expect(used.count == 2)
        guard used.count == 2 else { return }
        let arpReply = try memory.readBytes(at: buffers[Int(used[0].head)], count: Int(used[0].length))
        #expect(Array(arpReply[(12 + 12)..<(12 + 14)]) == [0x08, 0x06])
        let synAck = try GuestPackets.decode(Array(try memory.readBytes(at: buffers[Int(used[1].head)], count: Int(used[1].length)).dropFirst(12)))
        #expect(synAck.syn && synAck.acknowledgment == 8)
        #expect(inner.sent(milliseconds: 50) == nil, "nothing for MMDS reached the tap")
        #expect(interrupt.errors.isEmpty)
    }
}
