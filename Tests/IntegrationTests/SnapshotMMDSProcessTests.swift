import Foundation
import Glibc
import Testing

/// MMDS across a snapshot, as Firecracker does it: the configuration
/// (version, IMDS compatibility, address, interfaces) is in the snapshot,
/// the data store is not; the loading VMM serves an empty store that its
/// API fills.
@Suite("Snapshot API and MMDS (swiftlet-vmm processes)", .serialized, .enabled(if: NetworkNamespace.shouldRun, NetworkNamespace.skipReason))
struct SnapshotMMDSProcessTests {
    static func waitFor(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(50_000)
        }
        return condition()
    }

    static func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    /// Pauses the VM behind `socket`, saves it to `directory`/state and
    /// /memory, stops `original`, and loads the files, resumed, into a fresh
    /// swiftlet-vmm started in `namespace`. The fresh VMM, its API socket and
    /// its serial file; the caller stops it.
    static func saveAndLoad(_ original: HostCommand, socket: String, in namespace: NetworkNamespace,
                            directory: String) throws -> (vmm: HostCommand, socket: String, serial: String) {
        let state = directory + "/state", memory = directory + "/memory"
        #expect(try UnixHTTP.request(socket, "PATCH", "/vm", body: #"{"state": "Paused"}"#).status == 204)
        let created = try UnixHTTP.request(socket, "PUT", "/snapshot/create",
                                           body: #"{"snapshot_path": "\#(state)", "mem_file_path": "\#(memory)"}"#)
        #expect(created.status == 204, "\(created.body)")
        original.stop()

        let loadedSocket = directory + "/loaded.sock", loadedSerial = directory + "/loaded.serial"
        let loaded = try namespace.start([ProcessTests.binary("swiftlet-vmm"), "--api-sock", loadedSocket, "--serial", "file:\(loadedSerial)"])
        do {
            try #require(waitFor(30) { FileManager.default.fileExists(atPath: loadedSocket) }, "stderr: \(loaded.errors)")
            let load = try UnixHTTP.request(loadedSocket, "PUT", "/snapshot/load",
                                            body: #"{"snapshot_path": "\#(state)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memory)"}, "resume_vm": true}"#)
            try #require(load.status == 204, "\(load.body)")
        } catch {
            loaded.stop()
            throw error
        }
        return (loaded, loadedSocket, loadedSerial)
    }

    @Test("a loaded snapshot has the saved MMDS configuration (V2, imds_compat, address, interfaces) and an empty data store that PUT /mmds fills")
    func mmdsConfigurationNotData() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        try namespace.addTap("tap0", address: "10.0.0.1/24")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-snap-mmds-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let config = directory + "/vm.json", metadata = directory + "/metadata.json"
        try Data("""
            {"boot-source": {"kernel_image_path": "\(try KitGuest.program("resume"))", "boot_args": "rounds=2000000000"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
             "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "52:54:00:ab:cd:01"}],
             "mmds-config": {"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": true}}
            """.utf8).write(to: URL(fileURLWithPath: config))
        try Data(#"{"latest": {"meta-data": {"ami-id": "ami-of-the-original"}}}"#.utf8).write(to: URL(fileURLWithPath: metadata))

        let binary = ProcessTests.binary("swiftlet-vmm")
        let originalSocket = directory + "/original.sock", originalSerial = directory + "/original.serial"
        let original = try namespace.start([binary, "--config-file", config, "--metadata", metadata,
                                            "--api-sock", originalSocket, "--serial", "file:\(originalSerial)"])
        defer { original.stop() }
        try #require(Self.waitFor(60) { ((try? String(contentsOfFile: originalSerial, encoding: .utf8)) ?? "").contains("KIT resume started") },
                     "stderr: \(original.errors)")
        #expect(try UnixHTTP.request(originalSocket, "GET", "/mmds").body.contains("ami-of-the-original"))
        let (loaded, loadedSocket, _) = try Self.saveAndLoad(original, socket: originalSocket, in: namespace, directory: directory)
        defer { loaded.stop() }

        let vmConfig = try UnixHTTP.request(loadedSocket, "GET", "/vm/config")
        let mmds = Self.json(vmConfig.body)["mmds-config"] as? [String: Any]
        #expect(mmds?["version"] as? String == "V2", "\(vmConfig.body)")
        #expect(mmds?["ipv4_address"] as? String == "169.254.170.2")
        #expect(mmds?["network_interfaces"] as? [String] == ["eth0"])
        #expect(mmds?["imds_compat"] as? Bool == true)
        let empty = try UnixHTTP.request(loadedSocket, "GET", "/mmds")
        #expect(empty.status == 200 && !empty.body.contains("ami-of-the-original"), "the data store is not in the snapshot: \(empty.status) \(empty.body)")
        #expect(try UnixHTTP.request(loadedSocket, "PUT", "/mmds", body: #"{"latest": {"meta-data": {"ami-id": "ami-of-the-clone"}}}"#).status == 204)
        #expect(try UnixHTTP.request(loadedSocket, "GET", "/mmds").body.contains("ami-of-the-clone"))
    }
}
