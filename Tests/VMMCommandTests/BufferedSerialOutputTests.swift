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

    @Test("an output whose reader hung up leaves the drain thread idle, and what is written to it is dropped and counted")
    func hungUpOutputDoesNotSpin() throws {
        // A write into the pipe after the hang-up would raise SIGPIPE; the VMM ignores it too.
        signal(SIGPIPE, SIG_IGN)
        var (reader, writer) = try Self.pipePair()
        let output = try BufferedSerialOutput(descriptor: writer)
        defer { output.stop() }
        output.write([1, 2, 3])
        for _ in 0..<2000 where output.idleWakeups.load(ordering: .relaxed) == 0 { usleep(1000) }
        reader = OwnedFileDescriptor(adopting: -1)  // closes the read end
        usleep(300_000)
        // Before the fix epoll reported the hang-up on every wait: hundreds of thousands of wake-ups here.
        #expect(output.idleWakeups.load(ordering: .relaxed) < 10)
        output.write([UInt8](repeating: 7, count: 100))
        for _ in 0..<2000 where output.droppedBytes.load(ordering: .relaxed) < 100 { usleep(1000) }
        #expect(output.droppedBytes.load(ordering: .relaxed) == 100)
        #expect(output.idleWakeups.load(ordering: .relaxed) < 10)
        _ = reader
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
