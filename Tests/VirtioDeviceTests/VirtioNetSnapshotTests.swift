import Glibc
import GuestMemory
import HostSystem
import SnapshotFormat
import Testing
import Virtio
@testable import VirtioNet
import VirtioTestSupport

@Suite("virtio-net snapshot state")
struct VirtioNetSnapshotTests {
    static let features = VirtioFeature.version1 | VirtioNetFeature.mac

    @Test("a held device transmits and receives nothing and reports both queues' walking state; resumed, it serves what came meanwhile")
    func holdsAndResumes() throws {
        let bench = try NetBench()
        try bench.activate(features: Self.features)
        defer { bench.device.reset() }
        let frame = ethernetFrame(payloadLength: 60)
        bench.transmit.addChain([try bench.readable(VirtioNetHeader().bytes + frame)])
        try bench.transmitNotification.signal()
        #expect(bench.tap.nextSent() != nil)
        #expect(bench.waitForUsed(bench.transmit, count: 1).count == 1)

        let snapshot = try bench.device.suspendForSnapshot()
        #expect(snapshot.queues[1] == VirtqueueState(nextAvailable: 1, nextUsed: 1, usedAtLastInterruptCheck: 1))
        #expect(snapshot.queues[0] != nil)

        bench.transmit.addChain([try bench.readable(VirtioNetHeader().bytes + frame)])
        try bench.transmitNotification.signal()
        bench.receive.addChain([bench.writable(2048)])
        try bench.receiveNotification.signal()
        try bench.tap.inject(frame)
        #expect(bench.tap.nextSent(timeout: 100) == nil, "held: nothing transmitted")
        #expect(bench.receive.usedIndex == 0, "held: nothing received")

        bench.device.resumeAfterSnapshot()
        #expect(bench.tap.nextSent() != nil)
        #expect(bench.waitForUsed(bench.receive, count: 1).count == 1)
    }

    @Test("the MAC comes back into a device with the same MAC; another MAC and a malformed section are refused")
    func restore() throws {
        let bench = try NetBench()
        let state = try bench.device.suspendForSnapshot().device
        let same = try NetBench()
        try same.device.restoreSnapshot(device: state)
        let other = VirtioNetDevice(tap: try SocketPairTap(), mac: MACAddress(unchecked: [0x52, 0x54, 0, 0, 0, 1]))
        #expect { try other.restoreSnapshot(device: state) } throws: { error in
            guard case let VirtioDeviceError.snapshotMismatch(_, part, saved, _) = error else { return false }
            return part == "the MAC address" && saved == "52:54:00:12:34:56"
        }
        #expect(throws: VirtioDeviceError.self) { try same.device.restoreSnapshot(device: Array(state.dropLast())) }
    }
}

extension MultiqueueBench {
    /// A fresh device on fresh taps over `original`'s guest memory and
    /// driver queues, as a VM restored from a snapshot of it has.
    init(restoringFrom original: MultiqueueBench, mtu: UInt16?) throws {
        memory = original.memory
        taps = try original.taps.indices.map { _ in try QueueRecordingTap() }
        receive = original.receive
        transmit = original.transmit
        control = original.control
        device = VirtioNetDevice(tap: taps[0], mac: NetBench.mac, offloads: false, additionalQueues: Array(taps.dropFirst()), mtu: mtu)
        notifications = try (0...(2 * taps.count)).map { _ in try EventFD() }
    }

    /// Activates as a transport restoring a snapshot does: each queue goes
    /// on from its saved walking state, then each is notified once.
    func activate(restoring states: [Int: VirtqueueState], features: UInt64 = Self.features) throws {
        func restored(_ driver: DriverQueue, _ index: Int) throws -> VirtioQueueActivation {
            var queue = try driver.deviceQueue(features: features)
            if let state = states[index] { queue.restore(state) }
            return VirtioQueueActivation(index: index, queue: queue, notification: notifications[index])
        }
        var queues: [VirtioQueueActivation] = []
        for pair in receive.indices {
            queues.append(try restored(receive[pair], 2 * pair))
            queues.append(try restored(transmit[pair], 2 * pair + 1))
        }
        queues.append(try restored(control, 2 * receive.count))
        try device.activate(VirtioActivation(memory: memory, features: features, queues: queues, interrupt: interrupt))
        for notification in notifications { try notification.signal() }
    }

    /// Sends one frame on `pair`; whether it left on that pair's tap queue.
    func transmits(on pair: Int) throws -> Bool {
        let frame = VirtioNetHeader().bytes + ethernetFrame(payloadLength: 70 + pair)
        let address = transmit[pair].allocate(frame.count)
        try memory.write(bytes: frame, at: address)
        transmit[pair].addChain([DriverQueue.Buffer(address: address, length: UInt32(frame.count), writable: false)])
        try notifications[2 * pair + 1].signal()
        return taps[pair].nextSent() == frame
    }

    /// The attach (true) and detach (false) requests on `pair`'s tap queue,
    /// once at least `count` were made (or a second passed).
    func attachments(of pair: Int, atLeast count: Int) -> [Bool] {
        for _ in 0..<1000 where taps[pair].attachments.withLock({ $0.count }) < count { usleep(1000) }
        return taps[pair].attachments.withLock { $0 }
    }
}

@Suite("virtio-net multiqueue snapshots", .serialized)
struct VirtioNetMultiqueueSnapshotTests {
    static let mac = NetBench.mac.octets

    static func encoded(_ state: NetSnapshotState) -> [UInt8] {
        var encoder = StateEncoder()
        state.encode(into: &encoder)
        return encoder.bytes
    }

    static func decodingError(_ bytes: [UInt8]) -> StateDecodingError? {
        var decoder = StateDecoder(bytes)
        do {
            _ = try NetSnapshotState.decode(from: &decoder)
            try decoder.finish()
            return nil
        } catch {
            return error
        }
    }

    @Test("pairs, active pairs and MTU round-trip; a single-queue device without an MTU writes the MAC alone, byte for byte as before")
    func coding() throws {
        let states = [NetSnapshotState(mac: Self.mac), NetSnapshotState(mac: Self.mac, queuePairs: 2, activePairs: 1, mtu: 9000),
                      NetSnapshotState(mac: Self.mac, queuePairs: 16, activePairs: 16), NetSnapshotState(mac: Self.mac, mtu: 1400),
                      NetSnapshotState(mac: Self.mac, queuePairs: 4, activePairs: 3, mtu: 68),
                      NetSnapshotState(mac: Self.mac, queuePairs: 2, activePairs: 2, mtu: 65535)]
        for state in states {
            var decoder = StateDecoder(Self.encoded(state))
            #expect(try NetSnapshotState.decode(from: &decoder) == state)
            #expect(decoder.isAtEnd, "\(state)")
        }
        // VNET, body length 10, the MAC's length 6, the MAC: what every earlier snapshot holds.
        #expect(Self.encoded(NetSnapshotState(mac: Self.mac)) == Array("VNET".utf8) + [10, 0, 0, 0, 6, 0, 0, 0] + Self.mac)
        let written = try NetBench().device.suspendForSnapshot().device
        #expect(written == Array("VNET".utf8) + [10, 0, 0, 0, 6, 0, 0, 0] + Self.mac)
        try NetBench().device.restoreSnapshot(device: written)
    }

    @Test("pair counts outside 1-16, active counts outside 1-pairs, MTUs outside 68-65535, an empty VNMQ, another tag and every truncation are refused with the offset")
    func refusals() throws {
        func encoded(pairs: UInt16, active: UInt16, mtu: UInt16, tag: SectionTag = NetSnapshotState.multiqueueTag, extra: [UInt8] = []) -> [UInt8] {
            var encoder = StateEncoder()
            encoder.section(NetSnapshotState.tag) { encoder in
                encoder.encode(bytes: Self.mac)
                encoder.section(tag) { encoder in
                    encoder.encode(pairs)
                    encoder.encode(active)
                    encoder.encode(mtu)
                    encoder.append(raw: extra)
                }
            }
            return encoder.bytes
        }
        let good = encoded(pairs: 2, active: 1, mtu: 9000)
        #expect(Self.decodingError(good) == nil)
        // VNET's header (8 bytes), the MAC (4 + 6), VNMQ's header (8): pairs at 26, active at 28, MTU at 30.
        #expect(Self.decodingError(encoded(pairs: 0, active: 1, mtu: 0)) == .invalidValue(offset: 26, what: "queue pair count 0 (1 to 16)"))
        #expect(Self.decodingError(encoded(pairs: 17, active: 1, mtu: 0)) == .invalidValue(offset: 26, what: "queue pair count 17 (1 to 16)"))
        #expect(Self.decodingError(encoded(pairs: 2, active: 0, mtu: 0)) == .invalidValue(offset: 28, what: "active queue pair count 0 (1 to 2)"))
        #expect(Self.decodingError(encoded(pairs: 2, active: 3, mtu: 0)) == .invalidValue(offset: 28, what: "active queue pair count 3 (1 to 2)"))
        #expect(Self.decodingError(encoded(pairs: 2, active: 1, mtu: 67))
                == .invalidValue(offset: 30, what: "MTU 67 (0 for none, or 68 to 65535)"))
        #expect(Self.decodingError(encoded(pairs: 1, active: 1, mtu: 0))
                == .invalidValue(offset: 18, what: "'VNMQ' section for one queue pair without an MTU (never written)"))
        #expect(Self.decodingError(encoded(pairs: 2, active: 1, mtu: 0, extra: [0])) == .trailingBytes(offset: 32, count: 1))
        #expect(Self.decodingError(encoded(pairs: 2, active: 1, mtu: 0, tag: SectionTag("VNXX")))
                == .badTag(offset: 18, expected: NetSnapshotState.multiqueueTag, found: SectionTag("VNXX")))
        for length in 0..<good.count {
            #expect(Self.decodingError(Array(good.prefix(length))) != nil, "the first \(length) bytes")
        }
        // A device names itself and the cause.
        let bench = try MultiqueueBench(pairs: 2)
        #expect { try bench.device.restoreSnapshot(device: encoded(pairs: 2, active: 3, mtu: 0)) } throws: { error in
            guard case let VirtioDeviceError.snapshotState(device, cause) = error else { return false }
            return device == "virtio-net (socketpair)" && cause == .invalidValue(offset: 28, what: "active queue pair count 3 (1 to 2)")
        }
    }

    @Test("a restore into another queues= or mtu= is refused naming the interface, the part, and the saved and configured values")
    func mismatches() throws {
        let saved = try MultiqueueBench(pairs: 2, mtu: 9000).device.suspendForSnapshot().device
        func refusal(_ bench: MultiqueueBench, _ state: [UInt8]) -> [String]? {
            do {
                try bench.device.restoreSnapshot(device: state)
            } catch {
                if case let .snapshotMismatch(device, part, saved, configured) = error { return [device, part, saved, configured] }
                return ["\(error)"]
            }
            return nil
        }
        #expect(refusal(try MultiqueueBench(pairs: 3, mtu: 9000), saved) == ["virtio-net (socketpair)", "the number of queue pairs (queues=)", "2", "3"])
        #expect(refusal(try MultiqueueBench(pairs: 1, mtu: 9000), saved) == ["virtio-net (socketpair)", "the number of queue pairs (queues=)", "2", "1"])
        #expect(refusal(try MultiqueueBench(pairs: 2, mtu: 1500), saved) == ["virtio-net (socketpair)", "the MTU (mtu=)", "9000", "1500"])
        #expect(refusal(try MultiqueueBench(pairs: 2), saved) == ["virtio-net (socketpair)", "the MTU (mtu=)", "9000", "none"])
        #expect(refusal(try MultiqueueBench(pairs: 2, mtu: 9000), saved) == nil)
        // A snapshot from before VNMQ (one pair, no MTU) into a device configured with them.
        let old = try NetBench().device.suspendForSnapshot().device
        #expect(refusal(try MultiqueueBench(pairs: 1, mtu: 1400), old) == ["virtio-net (socketpair)", "the MTU (mtu=)", "none", "1400"])
        #expect(refusal(try MultiqueueBench(pairs: 2), old) == ["virtio-net (socketpair)", "the number of queue pairs (queues=)", "1", "2"])
    }

    @Test("two pairs with one enabled: every queue's state is saved; a fresh device restored from it serves pair 0 and the control queue, and pair 1 stays detached until VQ_PAIRS_SET 2")
    func restoresActivePairs() throws {
        let bench = try MultiqueueBench(pairs: 2, mtu: 9000)
        try bench.activate()
        #expect(try bench.command([4, 0, 2, 0]) == VirtioNetControl.ok)
        #expect(try bench.receives(on: 1), "pair 1 serves once enabled")
        #expect(try bench.command([4, 0, 1, 0]) == VirtioNetControl.ok)
        for _ in 0..<1000 where bench.taps[1].attachments.withLock({ $0.last }) != false { usleep(1000) }
        #expect(bench.taps[1].attachments.withLock { $0 }.suffix(2) == [true, false], "pair 1 detached again")
        #expect(try bench.receives(on: 0))
        #expect(try bench.transmits(on: 0))
        // An RX buffer pair 0 takes ahead of any frame: the saved state steps back over it.
        let spare = bench.receive[0].addChain([DriverQueue.Buffer(address: bench.receive[0].allocate(2048), length: 2048, writable: true)])
        try bench.notifications[0].signal()
        usleep(100_000)
        let snapshot = try bench.device.suspendForSnapshot()
        bench.device.reset()

        #expect(Set(snapshot.queues.keys) == [0, 1, 2, 3, 4], "both pairs' RX and TX queues and the control queue")
        #expect(snapshot.queues[0].map { [$0.nextAvailable, $0.nextUsed] } == [1, 1], "\(String(describing: snapshot.queues[0]))")
        #expect(snapshot.queues[1].map { [$0.nextAvailable, $0.nextUsed] } == [1, 1], "\(String(describing: snapshot.queues[1]))")
        #expect(snapshot.queues[2].map { [$0.nextAvailable, $0.nextUsed] } == [1, 1], "\(String(describing: snapshot.queues[2]))")
        #expect(snapshot.queues[4].map { [$0.nextAvailable, $0.nextUsed] } == [2, 2], "\(String(describing: snapshot.queues[4]))")
        var decoder = StateDecoder(snapshot.device)
        #expect(try NetSnapshotState.decode(from: &decoder) == NetSnapshotState(mac: Self.mac, queuePairs: 2, activePairs: 1, mtu: 9000))

        let restored = try MultiqueueBench(restoringFrom: bench, mtu: 9000)
        try restored.device.restoreSnapshot(device: snapshot.device)
        try restored.activate(restoring: snapshot.queues)
        defer { restored.device.reset() }
        // The chain stepped back over is taken again and gets the next frame.
        try restored.taps[0].inject(VirtioNetHeader().bytes + ethernetFrame(payloadLength: 64))
        for _ in 0..<1000 where restored.receive[0].usedIndex == 1 { usleep(1000) }
        var heads: [UInt32] = []
        while let used = restored.receive[0].popUsed() { heads.append(used.head) }
        #expect(heads.count == 2 && heads.last == UInt32(spare), "used heads \(heads), the spare chain was \(spare)")
        #expect(try restored.receives(on: 0), "pair 0 receives on")
        #expect(try restored.transmits(on: 0), "pair 0 transmits on")
        #expect(restored.attachments(of: 1, atLeast: 1) == [false], "pair 1's tap queue is detached, as after VQ_PAIRS_SET 1")
        #expect(try !restored.receives(on: 1, timeout: 150), "pair 1 serves nothing")
        #expect(restored.attachments(of: 0, atLeast: 1).allSatisfy { $0 }, "pair 0's tap queue stays attached")
        // The control queue goes on from its saved index and enables pair 1 again.
        #expect(try restored.command([4, 0, 2, 0]) == VirtioNetControl.ok)
        for _ in 0..<1000 where restored.receive[1].usedIndex == 1 { usleep(1000) }
        #expect(restored.receive[1].usedIndex == 2, "the frame waiting for pair 1 arrives once it is enabled")
        #expect(restored.attachments(of: 1, atLeast: 2) == [false, true])
        #expect(try restored.transmits(on: 1))
        #expect(restored.interrupt.errors.isEmpty, "\(restored.interrupt.errors)")
    }

    @Test("three pairs with two enabled: the restored device serves pairs 0 and 1 at once and keeps pair 2 detached")
    func restoresTwoOfThree() throws {
        let bench = try MultiqueueBench(pairs: 3)
        try bench.activate()
        #expect(try bench.command([4, 0, 2, 0]) == VirtioNetControl.ok)
        #expect(try bench.receives(on: 1), "pair 1 serves once enabled")
        let snapshot = try bench.device.suspendForSnapshot()
        bench.device.reset()
        #expect(Set(snapshot.queues.keys) == [0, 1, 2, 3, 4, 5, 6], "three pairs' RX and TX queues and the control queue")
        var decoder = StateDecoder(snapshot.device)
        #expect(try NetSnapshotState.decode(from: &decoder) == NetSnapshotState(mac: Self.mac, queuePairs: 3, activePairs: 2))

        let restored = try MultiqueueBench(restoringFrom: bench, mtu: nil)
        try restored.device.restoreSnapshot(device: snapshot.device)
        try restored.activate(restoring: snapshot.queues)
        defer { restored.device.reset() }
        #expect(try restored.receives(on: 1), "pair 1 serves without a new VQ_PAIRS_SET")
        #expect(try restored.transmits(on: 1))
        #expect(restored.attachments(of: 1, atLeast: 1) == [true], "pair 1's tap queue stays attached")
        #expect(restored.attachments(of: 2, atLeast: 1) == [false], "pair 2's tap queue is detached")
        #expect(try !restored.receives(on: 2, timeout: 150), "pair 2 serves nothing")
        #expect(restored.interrupt.errors.isEmpty, "\(restored.interrupt.errors)")
    }

    @Test("every pair's worker is held, enabled or not: nothing moves on any pair until the device is resumed")
    func holdsEveryPair() throws {
        let bench = try MultiqueueBench(pairs: 3)
        try bench.activate()
        defer { bench.device.reset() }
        #expect(try bench.command([4, 0, 2, 0]) == VirtioNetControl.ok)
        #expect(bench.attachments(of: 2, atLeast: 1) == [false], "pair 2 is not enabled")
        _ = try bench.device.suspendForSnapshot()
        #expect(try !bench.receives(on: 0, timeout: 100), "held: pair 0 receives nothing")
        #expect(try !bench.receives(on: 1, timeout: 100), "held: pair 1 receives nothing")
        #expect(try bench.command([4, 0, 3, 0]) == nil, "held: the control queue answers nothing")
        bench.device.resumeAfterSnapshot()
        for _ in 0..<1000 where bench.receive[0].usedIndex == 0 || bench.receive[1].usedIndex == 0 { usleep(1000) }
        #expect(bench.receive[0].usedIndex == 1 && bench.receive[1].usedIndex == 1, "resumed, pairs 0 and 1 deliver what came meanwhile")
        for _ in 0..<1000 where bench.control.usedIndex == 1 { usleep(1000) }
        #expect(bench.control.usedIndex == 2, "resumed, the control request is answered")
        #expect(bench.attachments(of: 2, atLeast: 2) == [false, true], "pair 2 enabled by it attaches its tap queue")
        #expect(bench.interrupt.errors.isEmpty, "\(bench.interrupt.errors)")
    }
}
