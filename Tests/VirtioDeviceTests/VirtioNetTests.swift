import CKVM
import Glibc
import GuestMemory
import HostSystem
import RateLimiter
import Synchronization
import Testing
import Virtio
import VirtioTestSupport
@testable import VirtioNet

/// A stand-in for a tap: a datagram socket pair keeps frame boundaries, as a
/// tap does. The device gets one end, the test the other (`peer`).
final class SocketPairTap: TapBackend {
    let device: OwnedFileDescriptor
    let peer: OwnedFileDescriptor
    let offloads = Mutex<[UInt32]>([])
    let label = "socketpair"
    var descriptor: Int32 { device.rawValue }

    init() throws {
        var pair: [Int32] = [-1, -1]
        let result = socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair)
        try #require(result == 0)
        device = OwnedFileDescriptor(adopting: pair[0])
        peer = OwnedFileDescriptor(adopting: pair[1])
        // Room for several 64 KiB frames in flight.
        var size: Int32 = 4 << 20
        _ = setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(pair[1], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    func setOffloads(_ flags: UInt32) throws(VirtioNetError) { offloads.withLock { $0.append(flags) } }

    func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        try systemCall("readv") { readv(device.rawValue, vectors.baseAddress, Int32(vectors.count)) }
    }

    func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        try systemCall("writev") { writev(device.rawValue, vectors.baseAddress, Int32(vectors.count)) }
    }

    /// What the host side sends: header and frame as one datagram.
    func inject(_ frame: [UInt8]) throws {
        try peer.writeAll(frame)
    }

    /// The next datagram the device sent, waiting up to a second.
    func nextSent(timeout: Int = 1000) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 70_000)
        for _ in 0..<timeout {
            let count = buffer.withUnsafeMutableBytes { recv(peer.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if count >= 0 { return Array(buffer[..<count]) }
            usleep(1000)
        }
        return nil
    }
}

/// One device on its own guest memory with driver-side RX and TX queues.
struct NetBench {
    let memory: GuestMemory
    let receive: DriverQueue
    let transmit: DriverQueue
    let tap: SocketPairTap
    let device: VirtioNetDevice
    let interrupt = RecordingInterrupt()
    let receiveNotification: EventFD
    let transmitNotification: EventFD

    static let mac = MACAddress(unchecked: [0x52, 0x54, 0, 0x12, 0x34, 0x56])

    init(size: UInt16 = 16, offloads: Bool = false, receiveLimiter: RateLimiterConfiguration = .unlimited,
         transmitLimiter: RateLimiterConfiguration = .unlimited) throws {
        memory = try GuestMemory(ranges: [(GuestAddress(0), 8 << 20)])
        receive = DriverQueue(memory: memory, size: size, base: GuestAddress(0x10000))
        transmit = DriverQueue(memory: memory, size: size, base: GuestAddress(0x400000))
        tap = try SocketPairTap()
        device = VirtioNetDevice(tap: tap, mac: Self.mac, offloads: offloads,
                                 receiveRateLimiter: receiveLimiter, transmitRateLimiter: transmitLimiter)
        receiveNotification = try EventFD()
        transmitNotification = try EventFD()
    }

    func activate(features: UInt64) throws {
        try device.activate(VirtioActivation(memory: memory, features: features, queues: [
            VirtioQueueActivation(index: 0, queue: try receive.deviceQueue(features: features), notification: receiveNotification),
            VirtioQueueActivation(index: 1, queue: try transmit.deviceQueue(features: features), notification: transmitNotification),
        ], interrupt: interrupt))
    }

    func writable(_ length: UInt32) -> DriverQueue.Buffer {
        DriverQueue.Buffer(address: receive.allocate(Int(length)), length: length, writable: true)
    }

    func readable(_ bytes: [UInt8]) throws -> DriverQueue.Buffer {
        let address = transmit.allocate(bytes.count)
        try memory.write(bytes: bytes, at: address)
        return DriverQueue.Buffer(address: address, length: UInt32(bytes.count), writable: false)
    }

    /// Waits (bounded) until `queue` has `count` used entries the test has not popped.
    func waitForUsed(_ queue: DriverQueue, count: Int, seen: UInt16 = 0) -> [(head: UInt32, length: UInt32)] {
        for _ in 0..<2000 where queue.usedIndex &- seen < UInt16(count) { usleep(1000) }
        var entries: [(head: UInt32, length: UInt32)] = []
        while let entry = queue.popUsed() { entries.append(entry) }
        return entries
    }
}

/// An Ethernet frame: broadcast destination, the test MAC as source, IPv4
/// EtherType, then `payloadLength` bytes counting up.
func ethernetFrame(payloadLength: Int) -> [UInt8] {
    [UInt8](repeating: 0xFF, count: 6) + NetBench.mac.octets + [0x08, 0x00] + (0..<payloadLength).map { UInt8(truncatingIfNeeded: $0) }
}

/// Compares byte arrays, reporting lengths and the first difference rather
/// than printing 64 KiB on failure.
func expectSameBytes(_ actual: [UInt8], _ expected: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
    guard actual != expected else { return }
    let first = zip(actual, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
    Issue.record("bytes differ: \(actual.count) vs \(expected.count) bytes, first difference at \(first.map(String.init) ?? "the end")",
                 sourceLocation: sourceLocation)
}

let plainFeatures = VirtioFeature.version1 | VirtioNetFeature.mac | VirtioNetFeature.status

@Suite("virtio-net device", .serialized)
struct VirtioNetDeviceTests {
    @Test("The configuration space holds the MAC, link up and one queue pair; bytes past it read zero")
    func configurationSpace() throws {
        let bench = try NetBench()
        var bytes = [UInt8](repeating: 0xAA, count: 16)
        bytes.withUnsafeMutableBytes { bench.device.readConfiguration(offset: 0, into: $0) }
        #expect(Array(bytes[0..<6]) == NetBench.mac.octets)
        #expect(bytes[6] == 1 && bytes[7] == 0, "status: VIRTIO_NET_S_LINK_UP")
        #expect(bytes[8] == 1 && bytes[9] == 0, "max_virtqueue_pairs")
        #expect(bytes[10...].allSatisfy { $0 == 0 })
        var high = [UInt8](repeating: 0xAA, count: 4)
        high.withUnsafeMutableBytes { bench.device.readConfiguration(offset: UInt64.max - 1, into: $0) }
        #expect(high == [0, 0, 0, 0])
        #expect(bench.device.offeredFeatures & VirtioNetFeature.mergeableReceiveBuffers != 0)
        #expect(bench.device.offeredFeatures & VirtioFeature.eventIndex != 0)
        #expect(bench.device.offeredFeatures & VirtioNetFeature.hostTSO4 == 0, "offloads off")
        #expect(VirtioNetDevice(tap: bench.tap, mac: NetBench.mac).offeredFeatures & VirtioNetFeature.hostTSO4 != 0)
    }

    @Test("TX gathers a header split over two buffers and a frame over three into one tap write")
    func transmitGathers() throws {
        let bench = try NetBench()
        try bench.activate(features: plainFeatures)
        defer { bench.device.reset() }
        let frame = ethernetFrame(payloadLength: 100)
        // DATA_VALID and num_buffers must not reach the tap on transmit.
        let header = VirtioNetHeader(flags: VirtioNetHeader.dataValid, bufferCount: 7).bytes
        let head = bench.transmit.addChain([
            try bench.readable(Array(header[0..<5])), try bench.readable(Array(header[5...]) + frame[0..<3]),
            try bench.readable(Array(frame[3..<50])), try bench.readable(Array(frame[50...])),
        ])
        try bench.transmitNotification.signal()
        let sent = try #require(bench.tap.nextSent())
        expectSameBytes(sent, VirtioNetHeader().bytes + frame)
        let used = bench.waitForUsed(bench.transmit, count: 1)
        #expect(used.count == 1 && used.first?.head == UInt32(head) && used.first?.length == 0)
        #expect(bench.device.netCounters.framesTransmitted.load(ordering: .relaxed) == 1)
        #expect(bench.device.counters.bytesFromGuest.load(ordering: .relaxed) == UInt64(12 + frame.count))
        #expect(bench.interrupt.signalledQueues.contains(1))
        #expect(bench.tap.offloads.withLock { $0 } == [0], "no guest offloads negotiated")
    }

    @Test("Malformed TX frames are counted and dropped, their chains returned, and good frames still go out")
    func transmitMalformed() throws {
        let bench = try NetBench(offloads: true)
        try bench.activate(features: plainFeatures)
        defer { bench.device.reset() }
        let frame = ethernetFrame(payloadLength: 46)
        bench.transmit.addChain([try bench.readable([1, 2, 3, 4, 5, 6, 7, 8])])                       // header too short
        bench.transmit.addChain([try bench.readable(VirtioNetHeader().bytes + [1, 2, 3])])            // frame too short
        bench.transmit.addChain([try bench.readable(VirtioNetHeader(flags: VirtioNetHeader.needsChecksum).bytes + frame)])  // CSUM not negotiated
        bench.transmit.addChain([try bench.readable(VirtioNetHeader(gsoType: VirtioNetHeader.gsoTCPv4, gsoSize: 1448).bytes + frame)])  // TSO not negotiated
        bench.transmit.addChain([try bench.readable(VirtioNetHeader().bytes + frame), bench.writable(64)])  // writable buffer
        let big = bench.transmit.allocate(VirtioNetFrame.maximumLength + 1)
        bench.transmit.addChain([try bench.readable(VirtioNetHeader().bytes),
                                 DriverQueue.Buffer(address: big, length: UInt32(VirtioNetFrame.maximumLength + 1), writable: false)])  // too long
        bench.transmit.addChain([try bench.readable(VirtioNetHeader().bytes + frame)])               // fine
        try bench.transmitNotification.signal()
        let used = bench.waitForUsed(bench.transmit, count: 7)
        #expect(used.count == 7)
        expectSameBytes(bench.tap.nextSent() ?? [], VirtioNetHeader().bytes + frame)
        #expect(bench.tap.nextSent(timeout: 50) == nil, "only the good frame reaches the tap")
        #expect(bench.device.netCounters.transmitMalformed.load(ordering: .relaxed) == 6)
        #expect(bench.device.netCounters.framesTransmitted.load(ordering: .relaxed) == 1)
        #expect(bench.interrupt.errors.isEmpty, "a bad frame is not a broken queue")
    }

    @Test("RX puts a frame and its header in one chain and sets num_buffers to 1")
    func receiveOneBuffer() throws {
        let bench = try NetBench()
        try bench.activate(features: plainFeatures)
        defer { bench.device.reset() }
        let buffer = bench.writable(2048)
        let head = bench.receive.addChain([buffer])
        try bench.receiveNotification.signal()
        let frame = ethernetFrame(payloadLength: 200)
        var header = VirtioNetHeader(flags: VirtioNetHeader.dataValid)
        try bench.tap.inject(header.bytes + frame)
        let used = bench.waitForUsed(bench.receive, count: 1)
        #expect(used.count == 1 && used.first?.head == UInt32(head))
        #expect(used.first?.length == UInt32(12 + frame.count))
        header.bufferCount = 1
        expectSameBytes(try bench.memory.readBytes(at: buffer.address, count: 12 + frame.count), header.bytes + frame)
        #expect(bench.interrupt.signalledQueues.contains(0))
        #expect(bench.device.netCounters.framesReceived.load(ordering: .relaxed) == 1)
    }

    @Test("RX with MRG_RXBUF spreads a frame over three chains and sets num_buffers to 3")
    func receiveMergeable() throws {
        let bench = try NetBench()
        try bench.activate(features: plainFeatures | VirtioNetFeature.mergeableReceiveBuffers)
        defer { bench.device.reset() }
        let buffers = (0..<4).map { _ in bench.writable(512) }
        for buffer in buffers { bench.receive.addChain([buffer]) }
        try bench.receiveNotification.signal()
        let frame = ethernetFrame(payloadLength: 1200 - 12 - 14)
        try bench.tap.inject(VirtioNetHeader().bytes + frame)
        let used = bench.waitForUsed(bench.receive, count: 3)
        #expect(used.map(\.length) == [512, 512, 176])
        var received: [UInt8] = []
        for (buffer, entry) in zip(buffers, used) {
            received += try bench.memory.readBytes(at: buffer.address, count: Int(entry.length))
        }
        expectSameBytes(received, VirtioNetHeader(bufferCount: 3).bytes + frame)
        // The fourth chain is kept for the next frame.
        try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 50))
        let next = bench.waitForUsed(bench.receive, count: 1, seen: 3)
        #expect(next.map(\.length) == [UInt32(76)])
        #expect(try bench.memory.readBytes(at: buffers[3].address + 10, count: 2) == [1, 0])
    }

    @Test("With TSO negotiated a 64 KiB frame goes straight into a big chain (no MRG_RXBUF)")
    func receiveLargeDirect() throws {
        let bench = try NetBench(size: 32, offloads: true)
        let features = plainFeatures | VirtioNetFeature.checksum | VirtioNetFeature.guestChecksum | VirtioNetFeature.guestTSO4
        try bench.activate(features: features)
        defer { bench.device.reset() }
        // Like Linux's "big packets": one chain of a header buffer and 17 pages.
        let parts = [bench.writable(12)] + (0..<17).map { _ in bench.writable(4096) }
        bench.receive.addChain(parts)
        try bench.receiveNotification.signal()
        let frame = ethernetFrame(payloadLength: 60_000)
        try bench.tap.inject(VirtioNetHeader(flags: VirtioNetHeader.needsChecksum, checksumStart: 34, checksumOffset: 16).bytes + frame)
        let used = bench.waitForUsed(bench.receive, count: 1)
        #expect(used.first?.length == UInt32(12 + frame.count))
        var received: [UInt8] = []
        for part in parts { received += try bench.memory.readBytes(at: part.address, count: Int(part.length)) }
        #expect(Array(received[0..<12]) == VirtioNetHeader(flags: VirtioNetHeader.needsChecksum, checksumStart: 34, checksumOffset: 16, bufferCount: 1).bytes)
        expectSameBytes(Array(received[12..<(12 + frame.count)]), frame)
        #expect(bench.interrupt.errors.isEmpty)
        #expect(bench.tap.offloads.withLock { $0 } == [UInt32(TUN_F_CSUM | TUN_F_TSO4)])
    }

    @Test("A frame larger than the driver's buffers is dropped and counted; the buffers serve the next frame")
    func receiveTooLarge() throws {
        let bench = try NetBench()
        try bench.activate(features: plainFeatures)
        defer { bench.device.reset() }
        let buffer = bench.writable(1000)
        bench.receive.addChain([buffer])
        try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 1400))
        try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 10))
        try bench.receiveNotification.signal()
        let used = bench.waitForUsed(bench.receive, count: 1)
        #expect(used.map(\.length) == [UInt32(36)])
        #expect(bench.device.netCounters.receiveDropped.load(ordering: .relaxed) == 1)
    }

    @Test("RX without buffers stops polling the tap instead of spinning, and resumes on the RX notification")
    func receiveWithoutBuffersWaits() throws {
        let bench = try NetBench()
        try bench.activate(features: plainFeatures | VirtioFeature.eventIndex)
        defer { bench.device.reset() }
        for length in [100, 200, 300] { try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: length)) }
        usleep(300_000)
        let wakeups = bench.device.netCounters.wakeups.load(ordering: .relaxed)
        #expect(wakeups >= 1 && wakeups <= 3, "the worker woke \(wakeups) times in 300 ms with a readable tap and no buffers")
        #expect(bench.device.netCounters.receiveStalls.load(ordering: .relaxed) == 1)
        #expect(bench.receive.availableEvent == 0, "EVENT_IDX: the device asks to be notified at the next buffer")
        // The driver adds buffers and notifies: all three frames arrive, in order.
        let buffers = (0..<3).map { _ in bench.writable(1600) }
        for buffer in buffers { bench.receive.addChain([buffer]) }
        try bench.receiveNotification.signal()
        let used = bench.waitForUsed(bench.receive, count: 3)
        #expect(used.map(\.length) == [UInt32(126), 226, 326])
        #expect(bench.device.netCounters.framesReceived.load(ordering: .relaxed) == 3)
    }

    @Test("With EVENT_IDX the device interrupts only when the used index passes used_event")
    func receiveInterruptSuppression() throws {
        let bench = try NetBench()
        try bench.activate(features: plainFeatures | VirtioFeature.eventIndex)
        defer { bench.device.reset() }
        bench.receive.setUsedEvent(5)  // interrupt once the 6th buffer is used
        for _ in 0..<8 { bench.receive.addChain([bench.writable(1600)]) }
        try bench.receiveNotification.signal()
        usleep(50_000)
        for _ in 0..<4 {
            try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 50))
            usleep(20_000)
        }
        _ = bench.waitForUsed(bench.receive, count: 4)
        #expect(bench.interrupt.signalledQueues.filter { $0 == 0 }.isEmpty)
        for _ in 0..<2 {
            try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 50))
            usleep(20_000)
        }
        _ = bench.waitForUsed(bench.receive, count: 2, seen: 4)
        #expect(bench.interrupt.signalledQueues.filter { $0 == 0 }.count == 1)
    }

    @Test("A broken TX chain reports a device error once; the device then ignores its queues")
    func brokenChain() throws {
        let bench = try NetBench()
        try bench.activate(features: plainFeatures)
        defer { bench.device.reset() }
        bench.transmit.writeDescriptor(0, address: 0xFFFF_FFFF_0000, length: 64, flags: 0, next: 0)
        bench.transmit.makeAvailable(0)
        try bench.transmitNotification.signal()
        for _ in 0..<1000 where bench.interrupt.errors.isEmpty { usleep(1000) }
        #expect(bench.interrupt.errors.count == 1)
        #expect(bench.interrupt.errors.first?.contains("outside guest RAM") == true)
        // A readable tap no longer wakes the worker.
        let before = bench.device.netCounters.wakeups.load(ordering: .relaxed)
        try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 50))
        usleep(100_000)
        #expect(bench.device.netCounters.wakeups.load(ordering: .relaxed) == before)
    }

    @Test("Reset stops the worker and activation starts a fresh one")
    func resetAndReactivate() throws {
        let bench = try NetBench()
        try bench.activate(features: plainFeatures)
        bench.device.reset()
        try bench.tap.inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 10))
        let receive = DriverQueue(memory: bench.memory, size: 16, base: GuestAddress(0x200000))
        let buffer = DriverQueue.Buffer(address: receive.allocate(1600), length: 1600, writable: true)
        receive.addChain([buffer])
        try bench.device.activate(VirtioActivation(memory: bench.memory, features: plainFeatures, queues: [
            VirtioQueueActivation(index: 0, queue: try receive.deviceQueue(features: plainFeatures), notification: bench.receiveNotification),
        ], interrupt: bench.interrupt))
        defer { bench.device.reset() }
        for _ in 0..<2000 where receive.usedIndex == 0 { usleep(1000) }
        let entry = receive.popUsed()
        #expect(entry?.length == UInt32(36), "the frame that waited in the tap arrives after re-activation")
    }
}

@Suite("virtio-net headers, offloads and MAC addresses")
struct VirtioNetHeaderTests {
    let checksum = VirtioNetFeature.checksum
    let tso = VirtioNetFeature.checksum | VirtioNetFeature.hostTSO4

    func check(_ header: VirtioNetHeader, length: UInt64 = 100, features: UInt64) -> TransmitFrameProblem? {
        if case let .failure(problem) = VirtioNetFrame.validateTransmit(header: header, frameLength: length, features: features) { return problem }
        return nil
    }

    @Test("The header encodes and decodes little-endian, 12 bytes")
    func headerRoundTrip() {
        let header = VirtioNetHeader(flags: 1, gsoType: 4, headerLength: 0x0102, gsoSize: 1448, checksumStart: 34, checksumOffset: 16, bufferCount: 3)
        #expect(header.bytes.count == 12)
        #expect(header.bytes[2] == 2 && header.bytes[3] == 1)
        #expect(VirtioNetHeader(bytes: header.bytes) == header)
        #expect(VirtioNetHeader(bytes: [1, 2, 3]) == nil)
    }

    @Test("TX header rules: lengths, flags, checksum position, segmentation only when negotiated")
    func transmitRules() {
        #expect(check(VirtioNetHeader(), features: 0) == nil)
        #expect(check(VirtioNetHeader(), length: 13, features: 0) == .frameTooShort(length: 13))
        #expect(check(VirtioNetHeader(), length: 65_555, features: 0) == .frameTooLong(length: 65_555, maximum: 65_554))
        #expect(check(VirtioNetHeader(flags: 8), features: 0) == .unknownFlags(8))
        #expect(check(VirtioNetHeader(flags: 1, checksumStart: 34, checksumOffset: 6), features: 0) == .checksumNotNegotiated)
        #expect(check(VirtioNetHeader(flags: 1, checksumStart: 34, checksumOffset: 6), features: checksum) == nil)
        #expect(check(VirtioNetHeader(flags: 1, checksumStart: 90, checksumOffset: 9), features: checksum)
            == .checksumOutsideFrame(start: 90, offset: 9, frameLength: 100))
        #expect(check(VirtioNetHeader(flags: 1, checksumStart: 0xFFFF, checksumOffset: 0xFFFF), features: checksum) != nil)
        #expect(check(VirtioNetHeader(gsoType: 1, gsoSize: 1448), features: checksum) == .segmentationNotNegotiated(1))
        #expect(check(VirtioNetHeader(gsoType: 1, gsoSize: 1448), features: tso) == nil)
        #expect(check(VirtioNetHeader(gsoType: 1, gsoSize: 0), features: tso) == .zeroSegmentSize)
        #expect(check(VirtioNetHeader(gsoType: 0x81, gsoSize: 1448), features: tso) == .segmentationNotNegotiated(0x81))
        #expect(check(VirtioNetHeader(gsoType: 2, gsoSize: 1448), features: tso) == .unknownSegmentation(2))
        #expect(check(VirtioNetHeader(gsoType: 0x80), features: tso) == .unknownSegmentation(0x80))
        let cleaned = try? VirtioNetFrame.validateTransmit(header: VirtioNetHeader(flags: 3, bufferCount: 9), frameLength: 100, features: checksum).get()
        #expect(cleaned?.flags == 1 && cleaned?.bufferCount == 0)
    }

    @Test("Accepted guest offloads map to TUN_F_* flags; without GUEST_CSUM there are none")
    func offloads() {
        #expect(VirtioNetFrame.tapOffloads(features: VirtioNetFeature.guestTSO4) == 0)
        #expect(VirtioNetFrame.tapOffloads(features: VirtioNetFeature.guestChecksum) == UInt32(TUN_F_CSUM))
        let all = VirtioNetFeature.guestChecksum | VirtioNetFeature.guestTSO4 | VirtioNetFeature.guestTSO6 | VirtioNetFeature.guestECN | VirtioNetFeature.guestUFO
        #expect(VirtioNetFrame.tapOffloads(features: all) == UInt32(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO))
    }

    @Test("MAC addresses parse with ':' or '-', refuse multicast, zero and malformed text, and derive stably")
    func macAddresses() throws {
        #expect(try MACAddress(parsing: "52:54:00:12:34:56").description == "52:54:00:12:34:56")
        #expect(try MACAddress(parsing: "02-AB-cd-00-00-01").octets == [2, 0xAB, 0xCD, 0, 0, 1])
        #expect(throws: VirtioNetError.self) { try MACAddress(parsing: "01:00:5e:00:00:01") }
        #expect(throws: VirtioNetError.self) { try MACAddress(parsing: "ff:ff:ff:ff:ff:ff") }
        #expect(throws: VirtioNetError.self) { try MACAddress(parsing: "00:00:00:00:00:00") }
        #expect(throws: VirtioNetError.self) { try MACAddress(parsing: "52:54:00:12:34") }
        #expect(throws: VirtioNetError.self) { try MACAddress(parsing: "52:54:00:12:34:5g") }
        #expect(throws: VirtioNetError.self) { try MACAddress(parsing: "52:54:00:12:34:567") }
        do {
            _ = try MACAddress(parsing: "03:00:00:00:00:01")
        } catch {
            #expect(error.description.contains("multicast"))
        }
        let derived = MACAddress.derived(from: "net0/tap0")
        #expect(derived == MACAddress.derived(from: "net0/tap0"))
        #expect(derived != MACAddress.derived(from: "net1/tap1"))
        #expect(derived.isLocallyAdministered && !derived.isMulticast)
    }

    @Test("Tap names and adopted descriptors are checked with errors that say why")
    func tapErrors() throws {
        #expect(throws: VirtioNetError.invalidTapName("", reason: "it is empty")) { try Tap(name: "") }
        #expect(throws: VirtioNetError.self) { try Tap(name: "a-name-that-is-too-long") }
        #expect(throws: VirtioNetError.self) { try Tap(name: "tap/0") }
        do {
            _ = try Tap(adopting: 987_654)
            Issue.record("adopting a closed descriptor succeeded")
        } catch {
            #expect(error.description.contains("not an open file descriptor"))
        }
        let pipeEnds = try SocketPairTap()
        do {
            _ = try Tap(adopting: pipeEnds.peer.rawValue)
            Issue.record("adopting a socket succeeded")
        } catch {
            #expect(error.description.contains("not attached to a tun/tap interface"))
        }
        // The refused descriptor still belongs to its owner.
        #expect(fcntl(pipeEnds.peer.rawValue, F_GETFD) >= 0)
        let permission = VirtioNetError.openTap(tap: "tap0", step: "TUNSETIFF", cause: SystemCallError(call: "ioctl", errno: Errno(rawValue: EPERM)))
        #expect(permission.description.contains("CAP_NET_ADMIN"))
        let busy = VirtioNetError.openTap(tap: "tap0", step: "TUNSETIFF", cause: SystemCallError(call: "ioctl", errno: Errno(rawValue: EBUSY)))
        #expect(busy.description.contains("busy"))
    }
}
