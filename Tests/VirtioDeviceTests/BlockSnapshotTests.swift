import Glibc
import GuestMemory
import HostSystem
import SnapshotFormat
import Testing
import Virtio
@testable import VirtioBlock
import VirtioTestSupport

@Suite("virtio-blk snapshot state")
struct BlockSnapshotTests {
    /// Queues a read of `sector` on `driver`.
    static func addRead(_ driver: DriverQueue, _ memory: GuestMemory, sector: UInt64) throws {
        let header = driver.allocate(16), reply = driver.allocate(512), status = driver.allocate(1)
        try memory.write(BlockRequestType.read, at: header)
        try memory.write(sector, at: header + 8)
        driver.addChain([.init(address: header, length: 16, writable: false), .init(address: reply, length: 512, writable: true),
                         .init(address: status, length: 1, writable: true)])
    }

    @Test("the device's state encodes, decodes into a fresh device over the same image, and GET_ID answers as saved")
    func roundTrip() throws {
        let image = try TemporaryImage(sectors: 64)
        // The saving device is gone before the fresh one opens the image (its lock).
        let (snapshot, saved) = try { () throws -> (VirtioDeviceSnapshot, BlockSnapshotState) in
            let device = try VirtioBlockDevice(path: image.path, identifier: "saved-id")
            let snapshot = try device.suspendForSnapshot()
            #expect(snapshot.queues.isEmpty, "not running: no queue state")
            var decoder = StateDecoder(snapshot.device)
            let saved = try BlockSnapshotState.decode(from: &decoder)
            #expect(saved == device.snapshotState && saved.capacityInSectors == 64)
            return (snapshot, saved)
        }()

        let fresh = try VirtioBlockDevice(path: image.path, identifier: "other-id")
        try fresh.restoreSnapshot(device: snapshot.device)
        #expect(fresh.snapshotState == saved)
        #expect(fresh.identifier == "saved-id")
    }

    @Test("a truncated state, a bad Bool and a disk of another size are refused with typed errors")
    func refusals() throws {
        let image = try TemporaryImage(sectors: 64)
        let device = try VirtioBlockDevice(path: image.path, identifier: "disk0")
        let bytes = try device.suspendForSnapshot().device
        for length in [0, 7, bytes.count - 1] {
            #expect { try device.restoreSnapshot(device: Array(bytes.prefix(length))) } throws: { error in
                guard case VirtioDeviceError.snapshotState(let name, _) = error else { return false }
                return name == "virtio-blk disk0"
            }
        }
        var badBool = bytes
        badBool[16] = 7  // after the tag, length and capacity: read-only
        #expect(throws: VirtioDeviceError.snapshotState(device: "virtio-blk disk0", cause: .invalidValue(offset: 16, what: "Bool"))) {
            try device.restoreSnapshot(device: badBool)
        }
        let bigger = try TemporaryImage(sectors: 128)
        let other = try VirtioBlockDevice(path: bigger.path, identifier: "disk0")
        #expect(throws: VirtioDeviceError.snapshotMismatch(device: "virtio-blk disk0", part: "the disk's capacity in sectors", saved: "64", configured: "128")) {
            try other.restoreSnapshot(device: bytes)
        }
    }

    @Test("suspending waits for the worker's requests and holds it: chains made available meanwhile are served only after resuming")
    func suspendHoldsTheWorker() throws {
        let image = try TemporaryImage()
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 4 << 20)])
        let driver = DriverQueue(memory: memory, size: 64)
        let device = try VirtioBlockDevice(path: image.path, identifier: "disk0")
        let notification = try EventFD()
        try device.activate(VirtioActivation(memory: memory, features: device.offeredFeatures, queues: [
            VirtioQueueActivation(index: 0, queue: try driver.deviceQueue(features: device.offeredFeatures), notification: notification),
        ], interrupt: RecordingInterrupt()))
        defer { device.reset() }
        for sector in 0..<4 { try Self.addRead(driver, memory, sector: UInt64(sector)) }
        try notification.signal()
        let snapshot = try device.suspendForSnapshot()
        // Whatever the worker took before the lock, it completed: nothing is in flight.
        let walk = try #require(snapshot.queues[0])
        #expect(walk.nextAvailable == walk.nextUsed)
        #expect(driver.usedIndex == walk.nextUsed)

        for sector in 4..<6 { try Self.addRead(driver, memory, sector: UInt64(sector)) }
        try notification.signal()
        usleep(50_000)
        #expect(driver.usedIndex == walk.nextUsed, "held: no request served")
        #expect(try device.suspendForSnapshot().queues[0] == walk)

        device.resumeAfterSnapshot()
        #expect(BlockDeviceTests.waitUntil { driver.usedIndex == 6 })
    }
}
