import Glibc
import GuestMemory
import HostSystem
import SnapshotFormat
import Testing
import Virtio
@testable import VirtioConsole
import VirtioTestSupport

@Suite("virtio-console snapshot state")
struct ConsoleSnapshotTests {
    @Test("a held console reports both queues' walking state and transmits nothing until resumed; its section restores into a fresh device and a malformed one is refused")
    func holdAndRestore() throws {
        let fixture = try ConsoleDeviceTests()
        defer { fixture.device.reset() }
        let first = fixture.transmit.allocate(2)
        try fixture.memory.write(bytes: Array("ab".utf8), at: first)
        fixture.transmit.addChain([.init(address: first, length: 2, writable: false)])
        try fixture.notifications[1].signal()
        #expect(eventually { fixture.transmit.usedIndex == 1 })
        let snapshot = try fixture.device.suspendForSnapshot()
        #expect(snapshot.queues[1] == VirtqueueState(nextAvailable: 1, nextUsed: 1, usedAtLastInterruptCheck: 1))
        #expect(snapshot.queues[0] != nil)

        let second = fixture.transmit.allocate(2)
        try fixture.memory.write(bytes: Array("cd".utf8), at: second)
        fixture.transmit.addChain([.init(address: second, length: 2, writable: false)])
        try fixture.notifications[1].signal()
        usleep(50_000)
        #expect(fixture.output.bytes.withLock { $0 } == Array("ab".utf8), "held")
        fixture.device.resumeAfterSnapshot()
        #expect(eventually { fixture.output.bytes.withLock { $0 } == Array("abcd".utf8) })

        let fresh = try ConsoleDevice(output: CollectedOutput())
        try fresh.restoreSnapshot(device: snapshot.device)
        #expect(throws: VirtioDeviceError.self) { try fresh.restoreSnapshot(device: Array(snapshot.device.dropLast())) }
        var changed = snapshot.device
        changed[changed.count - 8] ^= 1
        #expect(throws: VirtioDeviceError.self) { try fresh.restoreSnapshot(device: changed) }
    }
}
