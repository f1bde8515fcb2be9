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
