import Glibc
import GuestMemory
import HostSystem
import Synchronization
import Testing
import Virtio
import VirtioTestSupport
@testable import VirtioNet

/// A socket-pair tap that records TUNSETQUEUE attach/detach requests.
final class QueueRecordingTap: TapBackend {
    let inner: SocketPairTap
    let attachments = Mutex<[Bool]>([])
    init() throws { inner = try SocketPairTap() }
    var descriptor: Int32 { inner.descriptor }
    var label: String { inner.label }
    func setOffloads(_ flags: UInt32) throws(VirtioNetError) { try inner.setOffloads(flags) }
    func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int { try inner.receive(into: vectors) }
    func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int { try inner.send(vectors) }
    func setQueueAttached(_ attached: Bool) throws(VirtioNetError) {
        attachments.withLock { if $0.last != attached { $0.append(attached) } }
    }
    func inject(_ frame: [UInt8]) throws { try inner.inject(frame) }
    func nextSent(timeout: Int = 1000) -> [UInt8]? { inner.nextSent(timeout: timeout) }
}

/// A multiqueue device: `pairs` socket-pair taps, driver-side RX and TX
/// queues per pair, and the control queue at index 2 × pairs.
struct MultiqueueBench {
    let memory: GuestMemory
    let taps: [QueueRecordingTap]
    let receive: [DriverQueue]
    let transmit: [DriverQueue]
    let control: DriverQueue
    let device: VirtioNetDevice
    let interrupt = RecordingInterrupt()
    let notifications: [EventFD]

    init(pairs: Int, mtu: UInt16? = nil) throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 32 << 20)])
        self.memory = memory
        taps = try (0..<pairs).map { _ in try QueueRecordingTap() }
        receive = (0..<pairs).map { DriverQueue(memory: memory, size: 16, base: GuestAddress(UInt64(2 * $0 + 1) << 20)) }
        transmit = (0..<pairs).map { DriverQueue(memory: memory, size: 16, base: GuestAddress(UInt64(2 * $0 + 2) << 20)) }
        control = DriverQueue(memory: memory, size: 16, base: GuestAddress(UInt64(2 * pairs + 1) << 20))
        device = VirtioNetDevice(tap: taps[0], mac: NetBench.mac, offloads: false, additionalQueues: Array(taps.dropFirst()), mtu: mtu)
        notifications = try (0...(2 * pairs)).map { _ in try EventFD() }
    }

    static let features = plainFeatures | VirtioNetFeature.controlQueue | VirtioNetFeature.multiqueue

    func activate(features: UInt64 = Self.features) throws {
        var queues: [VirtioQueueActivation] = []
        for pair in receive.indices {
            queues.append(VirtioQueueActivation(index: 2 * pair, queue: try receive[pair].deviceQueue(features: features), notification: notifications[2 * pair]))
            queues.append(VirtioQueueActivation(index: 2 * pair + 1, queue: try transmit[pair].deviceQueue(features: features),
                                                notification: notifications[2 * pair + 1]))
        }
        let controlIndex = 2 * receive.count
        queues.append(VirtioQueueActivation(index: controlIndex, queue: try control.deviceQueue(features: features), notification: notifications[controlIndex]))
        try device.activate(VirtioActivation(memory: memory, features: features, queues: queues, interrupt: interrupt))
    }

    /// Sends one control request; returns the ack byte, or nil if the device did not answer.
    func command(_ bytes: [UInt8]) throws -> UInt8? {
        let address = control.allocate(bytes.count)
        try memory.write(bytes: bytes, at: address)
        let ack = control.allocate(1)
        try memory.write(bytes: [0xEE], at: ack)
        let seen = control.usedIndex
        control.addChain([DriverQueue.Buffer(address: address, length: UInt32(bytes.count), writable: false),
                          DriverQueue.Buffer(address: ack, length: 1, writable: true)])
        try notifications[2 * receive.count].signal()
        for _ in 0..<2000 where control.usedIndex == seen { usleep(1000) }
        guard control.usedIndex != seen else { return nil }
        while control.popUsed() != nil {}
        return try memory.readBytes(at: ack, count: 1).first
    }

    /// Posts an RX buffer on `pair`, injects a frame into its tap queue, and
    /// reports whether the frame arrived within `timeout` milliseconds.
    func receives(on pair: Int, timeout: Int = 1000) throws -> Bool {
        let queue = receive[pair]
        let seen = queue.usedIndex
        queue.addChain([DriverQueue.Buffer(address: queue.allocate(2048), length: 2048, writable: true)])
        try notifications[2 * pair].signal()
        try taps[pair].inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 64))
        for _ in 0..<timeout where queue.usedIndex == seen { usleep(1000) }
        return queue.usedIndex != seen
    }

    func configuration() -> [UInt8] {
        var bytes = [UInt8](repeating: 0xAA, count: 14)
        bytes.withUnsafeMutableBytes { device.readConfiguration(offset: 0, into: $0) }
        return bytes
    }
}

@Suite("virtio-net multiqueue", .serialized)
struct VirtioNetMultiqueueTests {
    @Test("One queue pair offers neither CTRL_VQ, MQ nor MTU, has two queues and reports one pair and no MTU")
    func singleQueueUnchanged() throws {
        let bench = try MultiqueueBench(pairs: 1)
        let features = bench.device.offeredFeatures
        #expect(features & (VirtioNetFeature.controlQueue | VirtioNetFeature.multiqueue | VirtioNetFeature.mtu) == 0, "features \(String(features, radix: 16))")
        #expect(bench.device.queueMaximumSizes == [256, 256], "\(bench.device.queueMaximumSizes)")
        let bytes = bench.configuration()
        #expect(Array(bytes[8..<14]) == [1, 0, 0, 0, 0, 0], "\(bytes)")
    }

    @Test("Four pairs and mtu=9000 offer CTRL_VQ, MQ and MTU, nine queues, and max_virtqueue_pairs 4 and mtu 9000 in the configuration")
    func fourQueuesAndMTU() throws {
        let bench = try MultiqueueBench(pairs: 4, mtu: 9000)
        let features = bench.device.offeredFeatures
        #expect(VirtioNetFeature.controlQueue == 1 << 17 && VirtioNetFeature.multiqueue == 1 << 22 && VirtioNetFeature.mtu == 1 << 3)
        #expect(features & VirtioNetFeature.controlQueue != 0 && features & VirtioNetFeature.multiqueue != 0, "features \(String(features, radix: 16))")
        #expect(features & VirtioNetFeature.mtu != 0, "features \(String(features, radix: 16))")
        #expect(bench.device.queueMaximumSizes.count == 9, "\(bench.device.queueMaximumSizes)")
        let bytes = bench.configuration()
        #expect(Array(bytes[0..<6]) == NetBench.mac.octets, "\(bytes)")
        #expect(Array(bytes[8..<10]) == [4, 0], "max_virtqueue_pairs \(bytes)")
        #expect(Array(bytes[10..<12]) == [0x28, 0x23], "mtu \(bytes)")
        let single = try MultiqueueBench(pairs: 1, mtu: 1400)
        #expect(single.device.offeredFeatures & VirtioNetFeature.mtu != 0, "mtu alone offers VIRTIO_NET_F_MTU")
        #expect(single.device.offeredFeatures & VirtioNetFeature.multiqueue == 0, "mtu alone offers no MQ")
    }

    @Test("Only pair 0 serves until VQ_PAIRS_SET 2 is acked VIRTIO_NET_OK; then pair 1 receives and transmits")
    func pairsSet() throws {
        let bench = try MultiqueueBench(pairs: 2)
        try bench.activate()
        defer { bench.device.reset() }
        #expect(try bench.receives(on: 0), "pair 0 serves from the start")
        #expect(try !bench.receives(on: 1, timeout: 150), "pair 1 waits for VQ_PAIRS_SET")
        let ack = try bench.command([VirtioNetControl.classMultiqueue, VirtioNetControl.commandPairsSet, 2, 0])
        #expect(ack == VirtioNetControl.ok, "\(String(describing: ack))")
        // The frame left in pair 1's tap queue arrives now, in the buffer posted before.
        for _ in 0..<1000 where bench.receive[1].usedIndex == 0 { usleep(1000) }
        #expect(bench.receive[1].usedIndex == 1, "\(bench.receive[1].usedIndex)")
        let frame = ethernetFrame(payloadLength: 80)
        let address = bench.transmit[1].allocate(12 + frame.count)
        try bench.memory.write(bytes: VirtioNetHeader().bytes + frame, at: address)
        bench.transmit[1].addChain([DriverQueue.Buffer(address: address, length: UInt32(12 + frame.count), writable: false)])
        try bench.notifications[3].signal()
        let sent = bench.taps[1].nextSent()
        #expect(sent.map { $0 == VirtioNetHeader().bytes + frame } == true, "pair 1's frame leaves on tap queue 1")
        #expect(bench.interrupt.errors.isEmpty, "\(bench.interrupt.errors)")
        // Pair 1's tap queue was detached until enabled, then attached; pair 0's stays.
        #expect(bench.taps[1].attachments.withLock { $0 } == [false, true], "\(bench.taps[1].attachments.withLock { $0 })")
        #expect(bench.taps[0].attachments.withLock { $0 }.allSatisfy { $0 }, "\(bench.taps[0].attachments.withLock { $0 })")
    }

    @Test("VQ_PAIRS_SET with 0 or more pairs than offered is answered VIRTIO_NET_ERR and changes nothing")
    func pairsSetOutOfRange() throws {
        let bench = try MultiqueueBench(pairs: 2)
        try bench.activate()
        defer { bench.device.reset() }
        #expect(try bench.command([4, 0, 0, 0]) == VirtioNetControl.error, "zero pairs")
        #expect(try bench.command([4, 0, 3, 0]) == VirtioNetControl.error, "three of two pairs")
        #expect(try bench.command([4, 0, 2]) == VirtioNetControl.error, "a one-byte count")
        #expect(bench.device.netCounters.controlRefused.load(ordering: .relaxed) == 3, "control_refused")
        #expect(try !bench.receives(on: 1, timeout: 150), "pair 1 still off")
        #expect(bench.interrupt.errors.isEmpty, "\(bench.interrupt.errors)")
    }

    @Test("Unknown control classes and commands are answered VIRTIO_NET_ERR and the queue keeps working")
    func unknownClass() throws {
        let bench = try MultiqueueBench(pairs: 2)
        try bench.activate()
        defer { bench.device.reset() }
        #expect(try bench.command([0, 0, 1]) == VirtioNetControl.error, "VIRTIO_NET_CTRL_RX")
        #expect(try bench.command([200, 7]) == VirtioNetControl.error, "an unknown class")
        #expect(try bench.command([4, 1, 0, 0, 0, 0, 0, 0, 0, 0]) == VirtioNetControl.error, "MQ_RSS_CONFIG is not offered")
        #expect(try bench.command([4, 0, 2, 0]) == VirtioNetControl.ok, "a good request after them")
        #expect(bench.interrupt.errors.isEmpty, "\(bench.interrupt.errors)")
    }

    @Test("A control chain without a header or without room for the ack breaks the queue, counted, and the device does not crash")
    func malformedControl() throws {
        let bench = try MultiqueueBench(pairs: 2)
        try bench.activate()
        defer { bench.device.reset() }
        let address = bench.control.allocate(4)
        try bench.memory.write(bytes: [4, 0, 2, 0], at: address)
        bench.control.addChain([DriverQueue.Buffer(address: address, length: 4, writable: false)])  // no ack byte
        try bench.notifications[4].signal()
        for _ in 0..<1000 where bench.interrupt.errors.isEmpty { usleep(1000) }
        #expect(bench.interrupt.errors.count == 1, "\(bench.interrupt.errors)")
        #expect(bench.device.netCounters.controlMalformed.load(ordering: .relaxed) == 1, "control_malformed")
        #expect(try bench.command([4, 0, 2, 0]) == nil, "a broken queue answers nothing until reset")

        let second = try MultiqueueBench(pairs: 2)
        try second.activate()
        defer { second.device.reset() }
        let header = second.control.allocate(1)
        let ack = second.control.allocate(1)
        second.control.addChain([DriverQueue.Buffer(address: header, length: 1, writable: false),
                                 DriverQueue.Buffer(address: ack, length: 1, writable: true)])  // a 1-byte header
        try second.notifications[4].signal()
        for _ in 0..<1000 where second.interrupt.errors.isEmpty { usleep(1000) }
        #expect(second.device.netCounters.controlMalformed.load(ordering: .relaxed) == 1, "control_malformed")
    }

    @Test("Without MQ negotiated a multiqueue device serves one pair and its control queue is queue 2")
    func withoutMultiqueueNegotiated() throws {
        let bench = try MultiqueueBench(pairs: 2)
        let features = plainFeatures | VirtioNetFeature.controlQueue
        let controlNotification = try EventFD()
        try bench.device.activate(VirtioActivation(memory: bench.memory, features: features, queues: [
            VirtioQueueActivation(index: 0, queue: try bench.receive[0].deviceQueue(features: features), notification: bench.notifications[0]),
            VirtioQueueActivation(index: 1, queue: try bench.transmit[0].deviceQueue(features: features), notification: bench.notifications[1]),
            VirtioQueueActivation(index: 2, queue: try bench.control.deviceQueue(features: features), notification: controlNotification),
        ], interrupt: bench.interrupt))
        defer { bench.device.reset() }
        let address = bench.control.allocate(4)
        try bench.memory.write(bytes: [4, 0, 1, 0], at: address)
        let ack = bench.control.allocate(1)
        bench.control.addChain([DriverQueue.Buffer(address: address, length: 4, writable: false),
                                DriverQueue.Buffer(address: ack, length: 1, writable: true)])
        try controlNotification.signal()
        for _ in 0..<1000 where bench.control.usedIndex == 0 { usleep(1000) }
        #expect(try bench.memory.readBytes(at: ack, count: 1) == [VirtioNetControl.error], "MQ commands need MQ negotiated")
        #expect(try bench.receives(on: 0), "pair 0 serves")
    }
}
