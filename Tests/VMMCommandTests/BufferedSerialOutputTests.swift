import Glibc
import HostSystem
import Synchronization
import Testing
@testable import VMM

@Suite("buffered serial output")
struct BufferedSerialOutputTests {
    /// A pipe: (read end, write end).
    static func pipePair() throws -> (OwnedFileDescriptor, OwnedFileDescriptor) {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw SystemCallError(call: "pipe2", errno: .current) }
        return (OwnedFileDescriptor(adopting: ends[0]), OwnedFileDescriptor(adopting: ends[1]))
    }

    @Test("writes into an output nobody reads return at once; what overflows the buffer is dropped and counted; stop is bounded")
    func neverBlocks() throws {
        let (reader, writer) = try Self.pipePair()
        let output = try BufferedSerialOutput(descriptor: writer, capacity: 64 << 10)
        func inPipe() -> Int {
            var pending: Int32 = 0
            _ = ioctl(reader.rawValue, UInt(FIONREAD), &pending)
            return Int(pending)
        }
        // Fill the 64 KiB pipe through the buffer, then keep writing: a
        // blocking write would hang here.
        for _ in 0..<16 { output.write([UInt8](repeating: 0x41, count: 4096)) }
        for _ in 0..<5000 where inPipe() < 64 << 10 { usleep(1000) }
        #expect(inPipe() == 64 << 10)
        for _ in 0..<48 { output.write([UInt8](repeating: 0x42, count: 4096)) }
        // The buffer holds 64 KiB, and the drain thread may hold one more piece of up to 64 KiB it is waiting to write.
        #expect(output.droppedBytes.load(ordering: .relaxed) >= 16 * 4096, "what does not fit is dropped at once")
        output.stop()  // cannot flush into the full pipe: gives up after its deadline, dropping what is left
        output.write([1, 2, 3])
        let dropped = output.droppedBytes.load(ordering: .relaxed)
        #expect(UInt64(inPipe()) + dropped == 64 * 4096 + 3, "every byte was either written or counted as dropped")
        #expect(dropped == 48 * 4096 + 3)
    }

    @Test("everything written reaches a reader that keeps up, in order, including what is buffered at stop")
    func deliversInOrder() throws {
        let (reader, writer) = try Self.pipePair()
        let output = try BufferedSerialOutput(descriptor: writer)
        let expected = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 % 251) }
        let received = Mutex<[UInt8]>([])
        _ = fcntl(reader.rawValue, F_SETFL, O_NONBLOCK)
        let total = expected.count
        let drain = try HostThread(name: "test-reader") {
            var chunk = [UInt8](repeating: 0, count: 65536)
            // Bounded: a lost byte fails the comparison below instead of hanging.
            for _ in 0..<20_000 where received.withLock({ $0.count }) < total {
                let count = chunk.withUnsafeMutableBytes { Glibc.read(reader.rawValue, $0.baseAddress, $0.count) }
                if count > 0 { received.withLock { $0 += chunk[..<count] } } else { usleep(1000) }
            }
        }
        for start in stride(from: 0, to: expected.count, by: 1000) {
            output.write(Array(expected[start..<min(start + 1000, expected.count)]))
        }
        output.stop()
        drain.join()
        #expect(output.droppedBytes.load(ordering: .relaxed) == 0)
        #expect(received.withLock { $0 } == expected)
    }
}
