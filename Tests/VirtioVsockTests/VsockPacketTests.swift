import GuestMemory
import Testing
import Virtio
import VirtioTestSupport
@testable import VirtioVsock

@Suite("vsock packet header and TX parsing")
struct VsockPacketTests {
    @Test("the 44-byte header encodes little-endian and decodes back")
    func roundTrip() {
        let header = VsockHeader(operation: .readWrite, sourceCID: 3, destinationCID: 2, sourcePort: 0x1234_5678, destinationPort: 52,
                                 length: 100, flags: 3, bufferAllocation: 65536, forwardCount: 0xFFFF_FFFF)
        let bytes = header.bytes
        #expect(bytes.count == 44)
        #expect(Array(bytes[0..<8]) == [3, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(bytes[16..<20]) == [0x78, 0x56, 0x34, 0x12])
        #expect(Array(bytes[28..<32]) == [1, 0, 5, 0], "type 1 (stream), op 5 (RW)")
        #expect(VsockHeader(bytes: bytes) == header)
        #expect(VsockHeader(bytes: bytes).operation == .readWrite)
        var unknown = header
        unknown.rawOperation = 99
        #expect(VsockHeader(bytes: unknown.bytes).operation == nil)
    }

    func chain(_ memory: GuestMemory, _ queue: DriverQueue, _ pieces: [[UInt8]]) throws -> DescriptorChain {
        var buffers: [DriverQueue.Buffer] = []
        for piece in pieces {
            let address = queue.allocate(piece.count)
            try memory.write(bytes: piece, at: address)
            buffers.append(DriverQueue.Buffer(address: address, length: UInt32(piece.count), writable: false))
        }
        queue.addChain(buffers)
        var device = try queue.deviceQueue()
        guard let chain = try device.popChain() else { throw VsockPacketError.shortHeader(readable: 0) }
        return chain
    }

    @Test("a header split anywhere and a payload across buffers parse; the payload is exactly len bytes")
    func splitChains() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 4 << 20)])
        let header = VsockHeader(operation: .readWrite, sourceCID: 3, destinationCID: 2, sourcePort: 1, destinationPort: 2, length: 10)
        let bytes = header.bytes + pattern(10) + [0xEE, 0xEE]  // two bytes beyond len are ignored
        for split in [1, 20, 44, 50] {
            let queue = DriverQueue(memory: memory, size: 8)
            let packet = try VsockTransmitPacket.parse(try chain(memory, queue, [Array(bytes[..<split]), Array(bytes[split...])]), memory: memory)
            #expect(packet.header == header)
            #expect(packet.payload.reduce(0) { $0 + Int($1.length) } == 10, "split at \(split)")
            var reader = ChainReader(memory: memory, buffers: packet.payload)
            #expect(try reader.readBytes(count: 10) == pattern(10))
        }
    }

    @Test("a short header, len above 64 KiB and len beyond the chain are refused")
    func malformed() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 4 << 20)])
        let queue = DriverQueue(memory: memory, size: 8)
        #expect(throws: VsockPacketError.shortHeader(readable: 43)) {
            try VsockTransmitPacket.parse(try chain(memory, queue, [[UInt8](repeating: 0, count: 43)]), memory: memory)
        }
        var header = VsockHeader(operation: .readWrite, sourceCID: 3, destinationCID: 2, sourcePort: 1, destinationPort: 2, length: 65537)
        #expect(throws: VsockPacketError.oversizedPayload(length: 65537)) {
            try VsockTransmitPacket.parse(try chain(memory, DriverQueue(memory: memory, size: 8), [header.bytes]), memory: memory)
        }
        header.length = 11
        #expect(throws: VsockPacketError.payloadBeyondChain(length: 11, readable: 10)) {
            try VsockTransmitPacket.parse(try chain(memory, DriverQueue(memory: memory, size: 8), [header.bytes, pattern(10)]), memory: memory)
        }
    }
}
