import Foundation
import Glibc
import Testing

/// A VM with a multiqueue NIC with an MTU across the snapshot API: the
/// saved configuration carries `queues` and `mtu`, so the loading VMM
/// builds the same device (a 2-pair device's section would not fit a
/// 1-pair one) and reopens the tap with as many queues.
@Suite("Snapshot API with a multiqueue NIC (swiftlet-vmm processes)", .serialized, .enabled(if: NetworkNamespace.shouldRun, NetworkNamespace.skipReason))
struct SnapshotMultiqueueProcessTests {
    @Test("a VM with --net queues=2,mtu=1400 is saved with PUT /snapshot/create, and a fresh VMM loads it and finishes the computation without starting over",
          .timeLimit(.minutes(3)))
    func multiqueueNIC() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        try namespace.addTap("tap0", address: "10.0.0.1/24", multiQueue: true)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-snap-mq-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let binary = try ProcessTests.binary("swiftlet-vmm")
        let originalSocket = directory + "/original.sock", originalSerial = directory + "/original.serial"
        let original = try namespace.start([binary, "--kernel", try KitGuest.program("resume"), "--cmdline", "rounds=\(SnapshotKVMTests.rounds)",
                                            "--memory", "64", "--net", "tap=tap0,queues=2,mtu=1400",
                                            "--api-sock", originalSocket, "--serial", "file:\(originalSerial)"])
        defer { original.stop() }
        func serial(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        try #require(SnapshotMMDSProcessTests.waitFor(60) { serial(originalSerial).contains("KIT resume started") }, "stderr: \(original.errors)")
        let (loaded, _, loadedSerial) = try SnapshotMMDSProcessTests.saveAndLoad(original, socket: originalSocket, in: namespace, directory: directory)
        defer { loaded.stop() }
        #expect(SnapshotKVMTests.resultLine(serial(originalSerial)) == nil, "the computation ended before the pause")
        #expect(SnapshotMMDSProcessTests.waitFor(90) { serial(loadedSerial).contains("KIT resume PASS") }, "serial: \(serial(loadedSerial)) stderr: \(loaded.errors)")
        #expect(!serial(loadedSerial).contains("KIT resume started"), "the loaded guest goes on, it does not boot again")
    }
}
