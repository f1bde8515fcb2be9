import GuestMemory
import Testing
@testable import Virtio

@Suite("Chain reader and writer")
struct ChainIOTests {
    @Test("A reader crosses buffer boundaries and stops at the end")
    func readerCrossesBuffers() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 0x10000)])
        try memory.write(bytes: [1, 2, 3], at: GuestAddress(0x100))
        try memory.write(bytes: [4, 5], at: GuestAddress(0x200))
        var reader = ChainReader(memory: memory, buffers: [
            GuestBuffer(address: GuestAddress(0x100), length: 3), GuestBuffer(address: GuestAddress(0x200), length: 2),
        ])
        #expect(reader.remaining == 5)
        #expect(try reader.readBytes(count: 4) == [1, 2, 3, 4])
        #expect(try reader.readBytes(count: 2) == nil)
        #expect(try reader.read(UInt8.self) == 5)
        #expect(reader.remaining == 0)
    }

    @Test("A writer fills buffers in order and counts what it wrote")
    func writerFillsBuffers() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 0x10000)])
        var writer = ChainWriter(memory: memory, buffers: [
            GuestBuffer(address: GuestAddress(0x100), length: 2), GuestBuffer(address: GuestAddress(0x200), length: 2),
        ])
        #expect(try writer.write(bytes: [9, 8, 7, 6, 5]) == 4)
        #expect(writer.written == 4)
        #expect(try memory.readBytes(at: GuestAddress(0x100), count: 2) == [9, 8])
        #expect(try memory.readBytes(at: GuestAddress(0x200), count: 2) == [7, 6])
    }
}
