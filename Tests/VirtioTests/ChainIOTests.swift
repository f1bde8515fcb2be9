import Glibc
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

    @Test("withIOVectors puts the prefix first, skips whole and partial buffers, and covers exactly the rest")
    func ioVectorsSkip() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 0x10000)])
        try memory.write(bytes: Array(0..<32) as [UInt8], at: GuestAddress(0x100))
        let buffers = [GuestBuffer(address: GuestAddress(0x100), length: 4), GuestBuffer(address: GuestAddress(0x104), length: 12),
                       GuestBuffer(address: GuestAddress(0x110), length: 16)]
        var prefix: [UInt8] = [0xAA, 0xBB]
        func gathered(skipping: UInt64, withPrefix: Bool) throws -> [UInt8] {
            try prefix.withUnsafeMutableBytes { raw in
                try withIOVectors(memory: memory, prefix: withPrefix ? raw : nil, buffers: buffers, skipping: skipping) { vectors in
                    vectors.flatMap { vector in
                        Array(UnsafeRawBufferPointer(start: vector.iov_base, count: vector.iov_len))
                    }
                }
            }
        }
        #expect(try gathered(skipping: 0, withPrefix: true) == [0xAA, 0xBB] + (0..<32).map(UInt8.init))
        // 12 bytes: the whole first buffer and 8 of the second.
        #expect(try gathered(skipping: 12, withPrefix: false) == (12..<32).map(UInt8.init))
        // Exactly at a boundary, and past the end.
        #expect(try gathered(skipping: 16, withPrefix: false) == (16..<32).map(UInt8.init))
        #expect(try gathered(skipping: 40, withPrefix: true) == [0xAA, 0xBB])
    }

    @Test("withIOVectors refuses a buffer outside guest RAM and does not call the body")
    func ioVectorsBounds() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 0x10000)])
        var called = false
        #expect(throws: GuestMemoryError.outOfBounds(address: GuestAddress(0xFFF0), length: 0x20)) {
            try withIOVectors(memory: memory, buffers: [GuestBuffer(address: GuestAddress(0xFFF0), length: 0x20)]) { _ in called = true }
        }
        #expect(called == false)
    }

    @Test("A reader's typed read crosses buffers without losing bytes")
    func typedReadAcrossBuffers() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 0x10000)])
        try memory.write(bytes: [0x11, 0x22, 0x33], at: GuestAddress(0x100))
        try memory.write(bytes: [0x44, 0x55], at: GuestAddress(0x200))
        var reader = ChainReader(memory: memory, buffers: [
            GuestBuffer(address: GuestAddress(0x100), length: 3), GuestBuffer(address: GuestAddress(0x200), length: 2),
        ])
        #expect(try reader.read(UInt32.self) == 0x4433_2211)
        #expect(try reader.read(UInt16.self) == nil)
        #expect(try reader.read(UInt8.self) == 0x55)
    }
}
