import Foundation
import Glibc
import GuestMemory
import HostSystem
import SnapshotFormat
import Testing
import Virtio
@testable import VirtioVsock
import VirtioTestSupport

@Suite("virtio-vsock snapshot state", .serialized)
struct VsockSnapshotTests {
    static func activation(_ harness: VsockHarness) throws -> VirtioActivation {
        VirtioActivation(memory: harness.memory, features: 0, queues: [
            VirtioQueueActivation(index: 0, queue: try harness.receive.deviceQueue(), notification: try EventFD()),
            VirtioQueueActivation(index: 1, queue: try harness.transmit.deviceQueue(), notification: try EventFD()),
            VirtioQueueActivation(index: 2, queue: try harness.events.deviceQueue(), notification: try EventFD()),
        ], interrupt: harness.interrupt)
    }

    @Test("a held device reports all three queues' walking state and serves no host connection until resumed")
    func holdsAndResumes() throws {
        let harness = try VsockHarness()
        let device = try VirtioVsockDevice(guestCID: 3, listener: harness.listener, limits: .init())
        defer { device.reset() }
        harness.postReceiveBuffers(4, notify: false)
        try device.activate(try Self.activation(harness))
        let snapshot = try device.suspendForSnapshot()
        #expect(Set(snapshot.queues.keys) == [0, 1, 2])
        #expect(snapshot.queues[2] == VirtqueueState(nextAvailable: 0, nextUsed: 0, usedAtLastInterruptCheck: 0))

        let client = try harness.connectToDevice()
        defer { close(client) }
        harness.write(client, Array("CONNECT 52\n".utf8))
        usleep(100_000)
        #expect(harness.receivedPackets().isEmpty, "held: the connection is not forwarded")
        device.resumeAfterSnapshot()
        var request: VsockHeader?
        for _ in 0..<200 where request == nil {
            usleep(10_000)
            request = harness.receivedPackets().first?.header
        }
        #expect(request?.operation == .request && request?.destinationPort == 52)
    }

    @Test("a restored device sends TRANSPORT_RESET on the event queue when activated; another guest CID and a malformed section are refused")
    func transportResetAfterRestore() throws {
        let harness = try VsockHarness()
        let state = try VirtioVsockDevice(guestCID: 3, listener: harness.listener, limits: .init()).suspendForSnapshot().device
        let device = try VirtioVsockDevice(guestCID: 3, listener: harness.listener, limits: .init())
        defer { device.reset() }
        try device.restoreSnapshot(device: state)
        let eventBuffer = harness.events.allocate(8)
        try harness.memory.write(UInt32(0xEEEE_EEEE), at: eventBuffer)
        harness.events.addChain([DriverQueue.Buffer(address: eventBuffer, length: 8, writable: true)])
        try device.activate(try Self.activation(harness))
        let used = try #require(harness.events.popUsed())
        #expect(used.length == 4)
        #expect(try harness.memory.read(UInt32.self, at: eventBuffer) == 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET")
        #expect(harness.interrupt.signalledQueues.contains(2))
        #expect(try device.suspendForSnapshot().queues[2] == VirtqueueState(nextAvailable: 1, nextUsed: 1, usedAtLastInterruptCheck: 1))
        device.resumeAfterSnapshot()

        let other = try VirtioVsockDevice(guestCID: 4, listener: harness.listener, limits: .init())
        #expect(throws: VirtioDeviceError.snapshotMismatch(device: "virtio-vsock", part: "the guest CID", saved: "3", configured: "4")) {
            try other.restoreSnapshot(device: state)
        }
        #expect(throws: VirtioDeviceError.self) { try other.restoreSnapshot(device: Array(state.dropLast())) }
    }
}
