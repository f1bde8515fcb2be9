import Foundation
import SwiftletClient
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// swiftletd's storage pools and volumes (docs/storage.md): the API's
/// refusals, then kit guests writing to raw and qcow2 volumes, one an
/// overlay on a backing volume, with qemu-img as the oracle for the images.
@Suite("swiftletd's pools and volumes", .serialized)
struct DaemonStorageTests {
    static let qemuImg = ["/usr/bin/qemu-img", "/bin/qemu-img"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test("pools and volumes: defaults, refusals naming the value, sparse raw volumes, delete rules")
    func api() throws {
        let daemon = try DaemonHarness(label: "storage-api")
        defer { daemon.tearDown() }
        let pool = try daemon.client.definePool(PoolDefinition(name: "vms"))
        #expect(pool.definition.path?.hasSuffix("/images/pools/vms") == true && !pool.active, "\(pool)")
        let outside = try daemon.http.request("POST", "/v1/pools", body: Data(#"{"name": "etc", "path": "/etc/swiftlet"}"#.utf8))
        #expect(outside.status == 400 && outside.text.contains("outside the image directories"), "\(outside.text)")
        let dots = try daemon.http.request("POST", "/v1/pools", body: Data(#"{"name": "up", "path": "\#(daemon.imagesDirectory)/../x"}"#.utf8))
        #expect(dots.status == 400, "\(dots.text)")
        let null = try daemon.http.request("POST", "/v1/pools", body: Data(#"{"name": "n", "path": null}"#.utf8))
        #expect(null.status == 400 && null.text.contains("path"), "an explicit null is not an absent field: \(null.text)")
        // A file where the pool's folder would be: a 409 naming it, not a server error.
        try FileManager.default.createDirectory(atPath: daemon.imagesDirectory + "/pools", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: daemon.imagesDirectory + "/pools/blocked", contents: Data())
        _ = try daemon.client.definePool(PoolDefinition(name: "blocked"))
        let blocked = try daemon.cli(["pool-start", "blocked"])
        #expect(blocked.status == 4 && blocked.stderr.contains("is not a folder"), "\(blocked)")

        let inactive = try daemon.cli(["vol-create", "vms", "a", "1M", "--format", "raw"])
        #expect(inactive.status == 4 && inactive.stderr.contains("pool-start vms"), "\(inactive)")
        #expect(try daemon.cli(["pool-start", "vms"]).status == 0)
        let created = try daemon.cli(["vol-create", "vms", "a", "1M", "--format", "raw", "--json"])
        #expect(created.status == 0, "\(created)")
        let a = try daemon.client.volume("vms", "a")
        var status = stat()
        #expect(stat(a.path, &status) == 0 && status.st_size == 1 << 20 && status.st_blocks == 0, "a sparse 1 MiB file")
        for (arguments, text) in [(["vol-create", "vms", "a", "1M"], "already has a volume"),
                                  (["vol-create", "vms", "b", "1M", "--format", "vmdk"], "expected qcow2 or raw"),
                                  (["vol-create", "vms", "b", "0"], "invalid size"),
                                  (["vol-create", "vms", "b", "1M", "--format", "raw", "--backing", "vms/a"], "needs format qcow2"),
                                  (["vol-create", "vms", "b", "1M", "--backing", "vms/none"], "has no volume 'none'"),
                                  (["vol-create", "nowhere", "b", "1M"], "no pool named")] {
            let result = try daemon.cli(arguments)
            #expect(result.status != 0 && result.stderr.contains(text), "\(arguments): \(result)")
        }
        let listed = try daemon.cli(["vol-list", "vms"]).stdout
        #expect(listed.contains("a") && listed.contains("raw") && listed.contains(a.path), "\(listed)")
        let busy = try daemon.cli(["pool-undefine", "vms"])
        #expect(busy.status == 4 && busy.stderr.contains("pool-destroy"), "\(busy)")
        #expect(try daemon.cli(["pool-destroy", "vms"]).status == 0)
        let hasVolumes = try daemon.cli(["pool-undefine", "vms"])
        #expect(hasVolumes.status == 4 && hasVolumes.stderr.contains("1 volume"), "\(hasVolumes)")
        #expect(try daemon.cli(["pool-start", "vms"]).status == 0)
        #expect(try daemon.cli(["vol-delete", "vms", "a"]).status == 0)
        #expect(access(a.path, F_OK) != 0, "the file went with the volume")

        // Disks name a path or a volume, and a format from a fixed list.
        for disk in [#"{}"#, #"{"path": "/x", "volume": "vms/a"}"#, #"{"volume": "vms"}"#, #"{"path": "\#(daemon.imagesDirectory)/d", "format": "vmdk"}"#] {
            let json = #"{"name": "bad-disk", "kernel": "/k", "disks": [\#(disk)]}"#
            let response = try daemon.http.request("POST", "/v1/vms", body: Data(json.utf8))
            #expect(response.status == 400 && response.text.contains("disks[0]"), "\(disk): \(response.text)")
        }
    }

    @Test("a kit guest reads a raw backing volume through a qcow2 overlay volume and writes to the overlay; qemu-img checks and reads it; a running VM's volume is not deleted",
          .timeLimit(.minutes(4)),
          .enabled(if: TestEnvironment.guestsRun && (qemuImg != nil || TestEnvironment.isCI), "needs /dev/kvm and qemu-img (qemu-utils)"))
    func guestsWriteVolumes() throws {
        let qemuImg = try #require(Self.qemuImg, "qemu-img (Debian's qemu-utils) is missing")
        let daemon = try DaemonHarness(label: "storage-guests")
        defer { daemon.tearDown() }
        _ = try daemon.client.definePool(PoolDefinition(name: "vms"))
        _ = try daemon.client.startPool("vms")
        // The base: a raw volume holding the kit's host pattern (every word of sector L is L).
        let base = try daemon.client.createVolume(in: "vms", VolumeRequest(name: "base", capacityBytes: 1 << 20, format: "raw"))
        var pattern = Data(count: 1 << 20)
        pattern.withUnsafeMutableBytes { bytes in
            for word in 0..<(1 << 17) { bytes.storeBytes(of: UInt64(word / 64).littleEndian, toByteOffset: word * 8, as: UInt64.self) }
        }
        try pattern.write(to: URL(fileURLWithPath: base.path))
        let overlay = try daemon.client.createVolume(in: "vms", VolumeRequest(name: "overlay", capacityBytes: 1 << 20, backing: "vms/base"))
        #expect(overlay.format == "qcow2" && overlay.backing == base.path && overlay.backingFormat == "raw", "\(overlay)")
        let fresh = TestEnvironment.run(qemuImg, ["check", overlay.path])
        #expect(fresh.status == 0, "a new overlay passes qemu-img check: \(fresh.output)")
        let deleteBase = try daemon.cli(["vol-delete", "vms", "base"])
        #expect(deleteBase.status == 4 && deleteBase.stderr.contains("backs vms/overlay"), "\(deleteBase)")

        var definition = try daemon.definition("writer", program: "virtio-blk")
        definition.cmdline = "pattern=1 read_lba=0 read_count=8 write_lba=64 write_count=16"
        definition.disks = [.init(volume: "vms/overlay")]
        _ = try daemon.client.define(definition)
        _ = try daemon.client.action("writer", "start")
        let info = try daemon.wait(for: "writer", state: .shutOff, seconds: 60)
        let console = String(decoding: try daemon.client.consoleLog("writer"), as: UTF8.self)
        #expect(console.contains("pattern lba=0 count=8") && console.contains("write lba=64 count=16 flush=ok readback=ok") && !console.contains("FAIL"),
                "\(info.reason ?? "") \(console.suffix(1500)) \(daemon.log().suffix(1500))")

        // A running VM's volume is not deleted.
        var holder = try daemon.definition("holder", program: "idle")
        holder.disks = [.init(volume: "vms/overlay", readonly: true)]
        _ = try daemon.client.define(holder)
        _ = try daemon.client.action("holder", "start")
        let inUse = try daemon.cli(["vol-delete", "vms", "overlay"])
        #expect(inUse.status == 4 && inUse.stderr.contains("running VM 'holder'"), "\(inUse)")
        _ = try daemon.client.action("holder", "destroy")

        let check = TestEnvironment.run(qemuImg, ["check", overlay.path])
        #expect(check.status == 0 && check.output.contains("No errors"), "\(check.output)")
        // What the guest wrote, over the base's pattern elsewhere: qemu-img reads the overlay through its backing file.
        let flat = daemon.directory + "/flat.raw"
        #expect(TestEnvironment.run(qemuImg, ["convert", "-f", "qcow2", "-O", "raw", overlay.path, flat]).status == 0)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: flat))
        try #require(bytes.count == 1 << 20)
        func word(_ index: Int) -> UInt64 { bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) } }
        #expect(word(10 * 64) == 10 && word(100 * 64 + 5) == 100, "the backing image shows through")
        #expect(word(64 * 64) == 64 ^ 0x5a5a_5a5a_5a5a_5a5a && word(79 * 64 + 63) == 79 ^ 0x5a5a_5a5a_5a5a_5a5a, "the guest's writes are in the overlay")
        let baseAfter = try Data(contentsOf: URL(fileURLWithPath: base.path))
        #expect(baseAfter == pattern, "the backing volume is untouched")
    }
}
