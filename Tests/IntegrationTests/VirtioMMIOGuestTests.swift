import Foundation
import Testing

/// The default Linux guest with `pci=off` and every device on virtio-mmio,
/// in one boot (each costs 20-40 s where guest kernel code is emulated):
/// virtio-console as hvc0, virtio-rng as /dev/hwrng, a disk read and
/// written, a network interface on a tap inside a test-made namespace, and
/// virtio-vsock streams in both directions.
@Suite("virtio-mmio in the default Linux guest", .serialized,
       .enabled(if: NetworkNamespace.shouldRun, NetworkNamespace.skipReason),
       .enabled(if: LinuxGuest.isBuilt || KitGuest.isCI, LinuxGuest.skipReason))
struct VirtioMMIOGuestTests {
    @Test("pci=off: Linux binds console, rng, blk, net and vsock over virtio-mmio with one edge interrupt each; hvc0, /dev/hwrng, the disk, the tap and vsock streams both ways all work",
          .timeLimit(.minutes(10)))
    func everyDeviceOverMMIO() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        try namespace.addTap("tap0", address: "10.0.0.1/24")
        let image = try BlockTestImage()

        // Host side, inside the namespace: serve a known payload on 6000 and
        // report the digest of what the guest uploads on 6001.
        let size = 64 * 1024
        let server = """
            import hashlib, socket
            size = \(size)
            down = bytes((i * 13 + 5) & 0xFF for i in range(size))
            listeners = []
            for port in (6000, 6001):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("10.0.0.1", port))
                s.listen(1)
                s.settimeout(400)
                listeners.append(s)
            print("SERVER-READY", flush=True)
            c, _ = listeners[0].accept()
            c.sendall(down)
            c.close()
            print("DOWN-MD5", hashlib.md5(down).hexdigest(), flush=True)
            c, _ = listeners[1].accept()
            c.settimeout(120)
            up = b""
            while len(up) < size:
                chunk = c.recv(65536)
                if not chunk:
                    break
                up += chunk
            c.close()
            print("UP-BYTES", len(up), "UP-MD5", hashlib.md5(up).hexdigest(), flush=True)
            """
        // vsock: the guest sends 64 KiB to host port 7000, which answers with
        // its digest; the host sends 100000 bytes to the guest's port 5000.
        let vsockDirectory = try HostVsock.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: vsockDirectory) }
        let uds = vsockDirectory + "/v.sock"
        let sumListener = try HostVsock.listen(uds + "_7000")
        defer { close(sumListener) }
        let guestUpload = Reported<String?>(nil)
        let sumThread = Thread {
            guard HostVsock.readable(sumListener, milliseconds: 500_000) else { return }
            let client = accept(sumListener, nil, nil)
            guard client >= 0 else { return }
            defer { close(client) }
            let received = HostVsock.readAll(client, seconds: 300)
            let line = "SUM \(String(format: "%08x", HostVsock.fnv1a(received))) \(received.count)"
            guestUpload.value = line
            _ = HostVsock.sendAll(client, Array((line + "\n").utf8))
        }
        sumThread.start()
        let hostUpload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let hostResult = Reported<String?>(nil)
        let initiator = Thread {
            guard let (client, _) = HostVsock.connectToGuest(uds: uds, port: 5000, seconds: 500) else { return }
            defer { close(client) }
            _ = HostVsock.sendAll(client, hostUpload)
            shutdown(client, Int32(SHUT_WR))
            hostResult.value = String(decoding: HostVsock.readAll(client, seconds: 300), as: UTF8.self)
        }
        initiator.start()

        let host = try namespace.start(["python3", "-c", server])
        defer { host.stop() }
        #expect(host.waitForOutput("SERVER-READY", seconds: 30), "server: \(host.output) \(host.errors)")

        let script = [
            "swiftlet-vsock listen 5000 sum 1 &",
            "for d in /sys/bus/virtio/devices/*; do echo DEV=$(cat $d/device):$(basename $(readlink $d/driver)); done",
            "echo PCI=$(ls /sys/bus/pci/devices 2>/dev/null | wc -l)",
            "echo ACTIVE=$(cat /sys/class/tty/console/active)",
            "echo via-hvc0 > /dev/hvc0",
            "echo RNG=$(cat /sys/class/misc/hw_random/rng_current)",
            "echo BYTES=$(head -c 64 /dev/hwrng | od -An -v -tx1 | tr -d ' \\n')",
            "echo SIZE=$(cat /sys/block/vda/size) READ=$(dd if=/dev/vda bs=512 skip=1000 count=1 2>/dev/null | head -c 17)",
            GuestPattern.writeBlock(7), "sync", "echo WROTE",
            "ip addr add 10.0.0.2/24 dev eth0", "ip link set eth0 up",
            "ping -c 2 -W 10 10.0.0.1",
            "nc 10.0.0.1 6000 > /tmp/down; echo DOWN-GUEST $(md5sum /tmp/down)",
            "dd if=/dev/urandom of=/tmp/up bs=1024 count=\(size / 1024) 2>/dev/null; echo UP-GUEST $(md5sum /tmp/up)",
            "nc 10.0.0.1 6001 < /tmp/up",
            "echo VSOCK-UP=$(swiftlet-vsock connect 2 7000 send 65536)",
            "wait",
            "grep virtio /proc/interrupts | sed 's/^/IRQ=/'",
        ].joined(separator: "\n")
        let guest = try namespace.run([
            ProcessTests.binary("swiftlet"), "run", "--verbose", "--transport", "mmio", "--cmdline", "pci=off console=hvc0",
            "--console", "virtio", "--rng", "--disk", "path=\(image.path),id=mmio-disk", "--net", "tap=tap0,mac=52:54:00:ab:cd:01",
            "--vsock", "cid=3,uds=\(uds)",
            "--", "sh", "-c", script,
        ], timeout: 540)
        host.stop()
        let console = guest.output
        #expect(guest.status == 0, "stderr: \(guest.errors)\nconsole: \(console.suffix(3000))")

        // Found through ACPI, bound by the stock drivers; no PCI bus at all.
        let devices = VirtioPCIGuestTests.values("DEV", in: console)
        #expect(devices == ["0x0003:virtio_console", "0x0004:virtio_rng", "0x0002:virtio_blk", "0x0001:virtio_net", "0x0013:vmw_vsock_virtio_transport"],
                "console: \(console.suffix(3000))")
        #expect(VirtioPCIGuestTests.value("PCI", in: console) == "0")
        #expect(VirtioPCIGuestTests.value("ACTIVE", in: console)?.contains("hvc0") == true)
        // The console (hvc0) is on stderr with --verbose; stdout is the command's.
        #expect(guest.errors.contains("via-hvc0"), "stderr: \(guest.errors.suffix(3000))")
        #expect(VirtioPCIGuestTests.value("RNG", in: console)?.hasPrefix("virtio_rng") == true)
        let bytes = VirtioPCIGuestTests.value("BYTES", in: console) ?? ""
        #expect(bytes.count == 128 && Set(bytes).count > 4, "hwrng gave '\(bytes)'")
        #expect(console.contains("SIZE=16384 READ=HOST-SECTOR-01000"))
        #expect(console.contains("WROTE"))
        #expect(try image.bytes(at: 7 * 4096, count: 4096) == GuestPattern.block(7))
        #expect(console.contains("2 packets transmitted, 2 packets received"), "console: \(console.suffix(3000))")
        let served = host.output
        let downHost = NetworkTests.field(after: "DOWN-MD5 ", in: served)
        #expect(downHost != nil && downHost == NetworkTests.field(after: "DOWN-GUEST ", in: console), "server: \(served)")
        let upGuest = NetworkTests.field(after: "UP-GUEST ", in: console)
        #expect(served.contains("UP-BYTES \(size) ") && upGuest != nil && NetworkTests.field(after: "UP-MD5 ", in: served) == upGuest,
                "server: \(served) \(host.errors)")

        // vsock both ways: the digests match what was sent.
        while sumThread.isExecuting || initiator.isExecuting { usleep(10_000) }
        let guestPattern = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let expectedUp = "SUM \(String(format: "%08x", HostVsock.fnv1a(guestPattern))) 65536"
        #expect(guestUpload.value == expectedUp, "host got \(String(describing: guestUpload.value))")
        #expect(VirtioPCIGuestTests.value("VSOCK-UP", in: console) == expectedUp, "console: \(console.suffix(3000))")
        #expect(hostResult.value == "SUM \(String(format: "%08x", HostVsock.fnv1a(hostUpload))) 100000\n",
                "\(String(describing: hostResult.value))")

        // One edge-triggered IO-APIC input per device, at the GSIs the layout gives, each of which fired.
        let interrupts = VirtioPCIGuestTests.values("IRQ", in: console)
        for (index, gsi) in [6, 7, 10, 11, 12].enumerated() {
            let line = interrupts.first { $0.hasSuffix("virtio\(index)") } ?? ""
            #expect(line.contains("IO-APIC") && line.contains(" \(gsi)-edge"), "virtio\(index): \(interrupts)")
            let count = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
            #expect(count > 0, "no interrupt counted for virtio\(index): \(line)")
        }
    }
}
