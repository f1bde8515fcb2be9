import Foundation
import Glibc
import Testing

/// PUT /vsock in the Firecracker flow against a real swiftlet-vmm process.
@Suite("vsock through the control API (swiftlet-vmm processes)", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct VsockAPIProcessTests {
    @Test("PUT /vsock binds the socket before boot; the guest's traffic shows in GET /metrics; the socket goes when the VMM exits")
    func firecrackerFlow() throws {
        let directory = try HostVsock.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let uds = directory + "/v.sock"
        let vm = try ControlAPIProcessTests.VMMProcess([], name: "vsock")
        let kernel = try KitGuest.program("virtio-vsock")
        #expect(try vm.request("PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)", "boot_args": "phases=ra listen=5000"}"#).status == 204)
        let put = try vm.request("PUT", "/vsock", #"{"guest_cid": 3, "uds_path": "\#(uds)"}"#)
        #expect(put.status == 204, "\(put.body)")
        #expect(FileManager.default.fileExists(atPath: uds), "bound by PUT /vsock, as Firecracker does")
        let config = ControlAPIProcessTests.json(try vm.request("GET", "/vm/config").body)
        #expect((config["vsock"] as? [String: Any])?["uds_path"] as? String == uds)

        #expect(try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(vm.waitForSerial { $0.contains("KIT virtio-vsock refused=rst") }, "serial: \(vm.serial.suffix(800))")
        let late = try vm.request("PUT", "/vsock", #"{"guest_cid": 4, "uds_path": "\#(directory)/w.sock"}"#)
        #expect(late.status == 400 && late.body.contains("not supported after starting the microVM"), "\(late.body)")

        let metrics = ControlAPIProcessTests.json(try vm.request("GET", "/metrics").body)
        let device = (metrics["devices"] as? [[String: Any]] ?? []).first { ($0["name"] as? String)?.hasPrefix("virtio-vsock") == true }
        #expect(device?["vsock_resets_to_guest"] as? Int == 1, "\(metrics)")
        #expect(device?["vsock_guest_connect_failures"] as? Int == 1, "\(metrics)")

        // The guest now waits for a host-initiated stream on port 5000.
        let payload = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 5) }
        guard let (client, ok) = HostVsock.connectToGuest(uds: uds, port: 5000, seconds: 20) else {
            Issue.record("no OK from the guest; serial: \(vm.serial.suffix(800))")
            return
        }
        defer { close(client) }
        #expect(ok.hasPrefix("OK "))
        _ = HostVsock.sendAll(client, payload)
        shutdown(client, Int32(SHUT_WR))
        let reply = String(decoding: HostVsock.readAll(client, seconds: 20), as: UTF8.self)
        #expect(reply == "SUM \(String(format: "%08x", HostVsock.fnv1a(payload))) 50000\n")
        #expect(vm.waitForExit() == 0, "stderr: \(vm.stderrText())")
        #expect(!FileManager.default.fileExists(atPath: uds), "removed when the VMM exits")
    }
}
