import Foundation
import Testing

/// MMDS end to end: the default Linux guest reads metadata over HTTP from
/// 169.254.169.254 through its virtio-net device, on a tap inside a
/// test-made network namespace, while a capture on the tap proves that none
/// of that traffic reached the host.
extension NetworkTests {
    @Test("MMDS: the Linux guest reads metadata with wget (V1) and with a token over nc (V2 flow); a runtime PATCH shows; nothing for MMDS reaches the tap",
          .enabled(if: LinuxGuest.isBuilt || KitGuest.isCI, LinuxGuest.skipReason), .timeLimit(.minutes(15)))
    func linuxGuestReadsMetadata() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        try namespace.addTap("tap0", address: "10.0.0.1/24")

        // Counts every frame on the tap, and those to or from the MMDS address.
        let capture = try namespace.start(["python3", "-c", """
            import signal, socket
            # The test runner's threads block SIGTERM, and children inherit the mask: let stop() end this.
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
            s.bind(("tap0", 0))
            s.settimeout(1.0)
            mmds = bytes([169, 254, 169, 254])
            total = to_mmds = icmp = 0
            print("CAPTURE-READY", flush=True)
            while True:
                try:
                    f = s.recv(65535)
                except socket.timeout:
                    continue
                total += 1
                if f[12:14] == b"\\x08\\x06" and mmds in (f[28:32], f[38:42]):
                    to_mmds += 1
                elif f[12:14] == b"\\x08\\x00" and mmds in (f[26:30], f[30:34]):
                    to_mmds += 1
                elif f[12:14] == b"\\x08\\x00" and f[23] == 1:
                    icmp += 1
                print(f"CAPTURE total={total} mmds={to_mmds} icmp={icmp}", flush=True)
            """])
        defer {
            kill(capture.process.processIdentifier, SIGKILL)
            capture.stop()
        }
        #expect(capture.waitForOutput("CAPTURE-READY", seconds: 30), "capture: \(capture.errors)")

        // Short: it travels base64-encoded on the kernel command line (2 KiB at most).
        let guestScript = #"""
            m=169.254.169.254
            ip addr add 10.0.0.2/24 dev eth0 && ip link set eth0 up && ip route add $m dev eth0
            ping -c 1 -W 10 10.0.0.1 >/dev/null && echo PING-OK
            w() { wget -q -O - http://$m/$1; }
            r() { printf "$1\r\nHost: $m\r\n$2Connection: close\r\n\r\n" | nc $m 80; }
            echo "V1-AMI=$(w latest/meta-data/ami-id)"
            echo "V1-LIST=$(w latest/meta-data/ | tr '\n' ,)"
            T=$(r 'PUT /latest/api/token HTTP/1.1' 'X-metadata-token-ttl-seconds: 60\r\n' | tail -n 1)
            echo "TOKEN-LENGTH=${#T}"
            r 'GET /latest/meta-data/ami-id HTTP/1.1' "X-metadata-token: $T\r\nAccept: application/json\r\n" >/tmp/v2
            echo "V2-STATUS=$(head -n 1 /tmp/v2 | tr -d '\r')"
            echo "V2-BODY=$(tail -n 1 /tmp/v2)"
            r 'GET /latest/meta-data/ami-id HTTP/1.1' 'X-metadata-token: bogus\r\n' >/dev/null
            echo "BIG-LENGTH=$(w big | wc -c)"
            echo WAITING-FOR-PATCH
            i=0
            while [ $i -lt 120 ]; do v=$(w latest/meta-data/ami-id); [ "$v" = ami-patched ] && break; i=$((i + 1)); sleep 1; done
            echo "PATCHED=$v"
            """#
        let guest = URL(fileURLWithPath: try LinuxGuest.imagePath())
        let cmdline = ((try? String(contentsOf: guest.appendingPathComponent("cmdline"), encoding: .utf8)) ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let big = String(repeating: "m", count: 30_000)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-mmds-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let socket = directory.appendingPathComponent("api.sock").path
        let serial = directory.appendingPathComponent("serial.log")
        let config = directory.appendingPathComponent("vm.json")
        let metadata = directory.appendingPathComponent("metadata.json")
        try Data("""
            {"boot-source": {"kernel_image_path": "\(guest.appendingPathComponent("vmlinux").path)",
                             "initrd_path": "\(guest.appendingPathComponent("initramfs.cpio").path)",
                             "boot_args": "\(cmdline) swiftlet.cmd64=\(Data(guestScript.utf8).base64EncodedString())"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
             "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "52:54:00:ab:cd:01"}],
             "mmds-config": {"network_interfaces": ["eth0"]}}
            """.utf8).write(to: config)
        try Data(#"{"latest": {"meta-data": {"ami-id": "ami-12345678", "reservation-id": "r-fea54097", "network": {"interfaces": {}}}}, "big": "\#(big)"}"#.utf8).write(to: metadata)

        let vmm = try namespace.start([ProcessTests.binary("swiftlet-vmm"), "--config-file", config.path, "--metadata", metadata.path,
                                       "--api-sock", socket, "--serial", "file:\(serial.path)"])
        defer { vmm.stop() }
        var console: String { (try? String(contentsOf: serial, encoding: .utf8)) ?? "" }
        func waitForConsole(_ marker: String, seconds: Double) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if console.contains(marker) { return true }
                if !vmm.process.isRunning { return console.contains(marker) }
                usleep(200_000)
            }
            return false
        }
        try #require(waitForConsole("WAITING-FOR-PATCH", seconds: 600), "stderr: \(vmm.errors)\nconsole: \(console.suffix(3000))")
        let before = try UnixHTTP.request(socket, "GET", "/metrics")
        #expect(before.status == 200)
        let patch = try UnixHTTP.request(socket, "PATCH", "/mmds", body: #"{"latest": {"meta-data": {"ami-id": "ami-patched"}}}"#)
        #expect(patch.status == 204, "\(patch.body)")
        #expect(vmm.waitForExit(seconds: 240) == 0, "stderr: \(vmm.errors)\nconsole: \(console.suffix(3000))")
        // SIGKILL as well: a capture that somehow kept SIGTERM blocked must not hold the test.
        kill(capture.process.processIdentifier, SIGKILL)
        capture.stop()

        let output = console
        #expect(output.contains("PING-OK"), "console: \(output.suffix(3000))")
        #expect(output.contains("V1-AMI=ami-12345678\n") || output.contains("V1-AMI=ami-12345678\r"), "console: \(output.suffix(3000))")
        #expect(output.contains("V1-LIST=ami-id,network/,reservation-id"), "IMDS listing, keys sorted, objects with '/'")
        #expect(output.contains("TOKEN-LENGTH=44"))
        #expect(output.contains("V2-STATUS=HTTP/1.1 200 OK"))
        #expect(output.contains(#"V2-BODY="ami-12345678""#), "JSON for Accept: application/json")
        #expect(output.contains("BIG-LENGTH=30000"), "a response of many segments arrives whole")
        #expect(output.contains("PATCHED=ami-patched"), "a PATCH after boot is what the guest reads next")
        #expect(output.contains("SWIFTLET-EXIT-STATUS=0"))

        // The bogus token counted as invalid; the issued one did not.
        let counters = (ControlAPIProcessTests.json(before.body)["mmds"] as? [String: Any]) ?? [:]
        #expect(counters["rx_invalid_token"] as? Int == 1, "\(counters)")
        #expect((counters["rx_no_token"] as? Int ?? 0) >= 3, "\(counters)")
        #expect((counters["frames_intercepted"] as? Int ?? 0) > 10, "\(counters)")
        #expect(counters["connections_created"] as? Int == counters["requests"] as? Int, "one connection per request: \(counters)")

        // The capture saw the ping, and nothing to or from MMDS.
        let last = capture.output.split(separator: "\n").last { $0.hasPrefix("CAPTURE total=") }.map(String.init) ?? ""
        #expect(last.contains(" mmds=0 "), "capture: \(last)")
        let icmp = last.split(separator: "=").last.flatMap { Int($0) } ?? 0
        #expect(icmp >= 2, "the capture works: it saw the ping and its reply (\(last))")
    }
}
