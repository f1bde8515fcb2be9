import Glibc
import Devices
import GuestMemory
import HostSystem
import Synchronization
import Testing
import Virtio
import VirtioConsole
import VirtioTestSupport

final class CollectedOutput: SerialOutput {
    let bytes = Mutex<[UInt8]>([])
    /// The largest single write: how much the device gathered at once.
    let largestWrite = Mutex(0)
    func write(_ more: [UInt8]) {
        bytes.withLock { $0.append(contentsOf: more) }
        largestWrite.withLock { $0 = max($0, more.count) }
    }
}

/// Polls `condition` for up to two seconds (device work happens on its own thread).
func eventually(_ condition: () -> Bool) -> Bool {
    for _ in 0..<2000 {
        if condition() { return true }
        usleep(1000)
    }
    return condition()
}

@Suite("virtio-console")
struct ConsoleDeviceTests {
    let memory: GuestMemory
    let receive: DriverQueue
    let transmit: DriverQueue
    let output = CollectedOutput()
    let interrupt = RecordingInterrupt()
    let device: ConsoleDevice
    let notifications: [EventFD]

    init() throws {
        memory = try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)])
        receive = DriverQueue(memory: memory, size: 8, base: GuestAddress(0x10000))
        transmit = DriverQueue(memory: memory, size: 8, base: GuestAddress(0x40000))
        device = try ConsoleDevice(output: output)
        notifications = [try EventFD(), try EventFD()]
        try device.activate(VirtioActivation(memory: memory, features: 0, queues: [
            VirtioQueueActivation(index: 0, queue: try receive.deviceQueue(), notification: notifications[0]),
            VirtioQueueActivation(index: 1, queue: try transmit.deviceQueue(), notification: notifications[1]),
        ], interrupt: interrupt))
    }

    @Test("Bytes the guest transmits reach the output and the chain is returned")
    func transmitReachesOutput() throws {
        defer { device.reset() }
        let first = transmit.allocate(3), second = transmit.allocate(2)
        try memory.write(bytes: Array("hi ".utf8), at: first)
        try memory.write(bytes: Array("yo".utf8), at: second)
        transmit.addChain([.init(address: first, length: 3, writable: false), .init(address: second, length: 2, writable: false)])
        try notifications[1].signal()
        #expect(eventually { output.bytes.withLock { $0 } == Array("hi yo".utf8) })
        #expect(eventually { transmit.popUsed() != nil })
        #expect(eventually { interrupt.signalledQueues.contains(1) })
    }

    @Test("A long transmit chain reaches the output in pieces of at most 4 KiB, never gathered whole")
    func transmitInPieces() throws {
        defer { device.reset() }
        let length = 200_000
        let buffer = transmit.allocate(length)
        let pattern = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try memory.write(bytes: pattern, at: buffer)
        transmit.addChain([.init(address: buffer, length: UInt32(length - 1000), writable: false),
                           .init(address: buffer + UInt64(length - 1000), length: 1000, writable: false)])
        try notifications[1].signal()
        #expect(eventually { transmit.popUsed() != nil })
        #expect(output.bytes.withLock { $0 } == pattern)
        #expect(output.largestWrite.withLock { $0 } <= ConsoleDevice.transmitPieceSize)
        #expect(device.counters.bytesFromGuest.load(ordering: .relaxed) == UInt64(length))
    }

    @Test("A chain covering more than the console's 1 MiB limit breaks the queue, is counted, and nothing of it is read")
    func oversizeChainRefused() throws {
        defer { device.reset() }
        // Three 512 KiB buffers over the same guest RAM: 1.5 MiB in one chain.
        let half: UInt32 = 512 << 10
        transmit.addChain(Array(repeating: .init(address: GuestAddress(0), length: half, writable: false), count: 3))
        try notifications[1].signal()
        #expect(eventually { interrupt.errors.count == 1 })
        #expect(interrupt.errors.first?.contains("covers more than \(ConsoleDevice.chainLengthLimit) bytes") == true, "\(interrupt.errors)")
        #expect(device.counters.errors.load(ordering: .relaxed) == 1)
        #expect(output.bytes.withLock { $0.isEmpty })
        #expect(transmit.popUsed() == nil)
    }

    @Test("Typed input waits for a receive buffer, then fills it")
    func inputFillsReceiveBuffers() throws {
        defer { device.reset() }
        #expect(device.enqueueInput(Array("ls\n".utf8)) == 3)
        let buffer = receive.allocate(16)
        receive.addChain([.init(address: buffer, length: 16, writable: true)])
        try notifications[0].signal()
        var used: (head: UInt32, length: UInt32)?
        #expect(eventually { used = receive.popUsed(); return used != nil })
        #expect(used?.length == 3)
        #expect(try memory.readBytes(at: buffer, count: 3) == Array("ls\n".utf8))
        #expect(device.inputSpace == ConsoleDevice.inputCapacity)
    }

    @Test("A broken transmit chain is reported once and the device stops serving")
    func brokenChainReported() throws {
        defer { device.reset() }
        transmit.writeDescriptor(0, address: 1 << 30, length: 4, flags: 0, next: 0)
        transmit.makeAvailable(0)
        try notifications[1].signal()
        #expect(eventually { interrupt.errors.count == 1 })
        #expect(interrupt.errors.first?.contains("outside guest RAM") == true)
        _ = device.enqueueInput([1])
        usleep(20_000)
        #expect(interrupt.errors.count == 1)
    }
}
