import Glibc
import GuestMemory
import HostSystem
import SnapshotFormat
import Testing
import Virtio
@testable import VirtioRNG
import VirtioTestSupport

@Suite("virtio-rng snapshot state")
struct VirtioRNGSnapshotTests {
    @Test("a held device serves nothing and reports its queue's walking state; resumed it serves what came meanwhile; its empty section restores into a fresh device and a malformed one is refused")
    func holdAndRestore() throws {
        let fixture = try VirtioRNGTests()
        let device = VirtioRNG()
        defer { device.reset() }
        try fixture.activate(device)
        fixture.queue.addChain([.init(address: fixture.queue.allocate(8), length: 8, writable: true)])
        try fixture.notification.signal()
        #expect(eventually { fixture.queue.usedIndex == 1 })
        let snapshot = try device.suspendForSnapshot()
        #expect(snapshot.queues == [0: VirtqueueState(nextAvailable: 1, nextUsed: 1, usedAtLastInterruptCheck: 1)])

        fixture.queue.addChain([.init(address: fixture.queue.allocate(8), length: 8, writable: true)])
        try fixture.notification.signal()
        usleep(50_000)
        #expect(fixture.queue.usedIndex == 1, "held")
        device.resumeAfterSnapshot()
        #expect(eventually { fixture.queue.usedIndex == 2 })

        try VirtioRNG().restoreSnapshot(device: snapshot.device)
        #expect(throws: VirtioDeviceError.self) { try VirtioRNG().restoreSnapshot(device: Array(snapshot.device.dropLast())) }
        #expect(throws: VirtioDeviceError.self) { try VirtioRNG().restoreSnapshot(device: snapshot.device + [0]) }
    }
}
