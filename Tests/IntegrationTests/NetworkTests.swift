import Foundation
import Testing
import VMM

/// virtio-net end to end. Each test makes its own network namespace with a
/// tap inside (`ip netns add swiftlet-test-<random>`), runs the VMM and the
/// host side of the exchange inside it, and deletes it afterwards: nothing
/// touches the host's own interfaces, and every address lives only there.
@Suite("virtio-net in a network namespace", .serialized,
       .enabled(if: NetworkNamespace.shouldRun, NetworkNamespace.skipReason))
struct NetworkTests {
    @Test("The default Linux guest pings the host over the tap and moves 256 KiB each way with nc",
          .enabled(if: LinuxGuest.isBuilt || KitGuest.isCI, LinuxGuest.skipReason), .timeLimit(.minutes(8)))
    func linuxGuestExchangesData() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        try namespace.addTap("tap0", address: "10.0.0.1/24")

        // Host side, inside the namespace: serve a known payload on 6000,
        // read the guest's upload on 6001 and report both digests.
        let size = 256 * 1024
        let server = """
            import hashlib, socket, sys
            size = \(size)
            down = bytes((i * 7 + 3) & 0xFF for i in range(size))
            listeners = []
            for port in (6000, 6001):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("10.0.0.1", port))
                s.listen(1)
                s.settimeout(240)
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
        let host = try namespace.start(["python3", "-c", server])
        defer { host.stop() }
        #expect(host.waitForOutput("SERVER-READY", seconds: 30), "server: \(host.output) \(host.errors)")

        let guestScript = [
            "ip addr add 10.0.0.2/24 dev eth0", "ip link set eth0 up",
            "cat /sys/class/net/eth0/address",
            "ping -c 3 -W 10 10.0.0.1",
            "nc 10.0.0.1 6000 > /tmp/down", "echo DOWN-GUEST $(md5sum /tmp/down)",
            "dd if=/dev/urandom of=/tmp/up bs=1024 count=\(size / 1024) 2>/dev/null", "echo UP-GUEST $(md5sum /tmp/up)",
            "nc 10.0.0.1 6001 < /tmp/up; true",
        ].joined(separator: " && ")
        let guest = try namespace.run([ProcessTests.binary("swiftlet"), "run", "--net", "tap=tap0,mac=52:54:00:ab:cd:ef", "--",
                                       "sh", "-c", guestScript], timeout: 420)
        host.stop()
        let console = guest.output
        #expect(guest.status == 0, "stderr: \(guest.errors)\nconsole: \(console.suffix(3000))")
        #expect(console.contains("52:54:00:ab:cd:ef"), "the guest sees the configured MAC")
        #expect(console.contains("3 packets transmitted, 3 packets received"), "console: \(console.suffix(3000))")
        let served = host.output
        let downHost = Self.field(after: "DOWN-MD5 ", in: served)
        let downGuest = Self.field(after: "DOWN-GUEST ", in: console)
        #expect(downHost != nil && downHost == downGuest, "host sent \(downHost ?? "-"), guest got \(downGuest ?? "-")")
        let upGuest = Self.field(after: "UP-GUEST ", in: console)
        #expect(served.contains("UP-BYTES \(size) "), "server: \(served) \(host.errors)")
        #expect(upGuest != nil && Self.field(after: "UP-MD5 ", in: served) == upGuest, "guest sent \(upGuest ?? "-"); server: \(served)")
    }

    @Test("With --cpus 2 and queues=2,mtu=1400 the default Linux guest has 2 RX and 2 TX queues and MTU 1400, and pings the host",
          .enabled(if: LinuxGuest.isBuilt || KitGuest.isCI, LinuxGuest.skipReason), .timeLimit(.minutes(8)))
    func linuxGuestMultiqueue() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        try namespace.addTap("tap0", address: "10.0.0.1/24", multiQueue: true)
        let guestScript = [
            "ip addr add 10.0.0.2/24 dev eth0", "ip link set eth0 up",
            "echo QUEUES $(ls /sys/class/net/eth0/queues | tr '\\n' ' ')", "echo MTU $(cat /sys/class/net/eth0/mtu)",
            "ping -c 3 -W 10 10.0.0.1",
            "ping -c 3 -W 10 -s 1300 10.0.0.1",
        ].joined(separator: " && ")
        let guest = try namespace.run([ProcessTests.binary("swiftlet"), "run", "--cpus", "2", "--net", "tap=tap0,queues=2,mtu=1400", "--",
                                       "sh", "-c", guestScript], timeout: 420)
        let console = guest.output
        #expect(guest.status == 0, "stderr: \(guest.errors)\nconsole: \(console.suffix(3000))")
        #expect(console.contains("QUEUES rx-0 rx-1 tx-0 tx-1"), "console: \(console.suffix(3000))")
        #expect(console.contains("MTU 1400"), "console: \(console.suffix(3000))")
        #expect(console.components(separatedBy: "3 packets transmitted, 3 packets received").count == 3, "console: \(console.suffix(3000))")
    }

    @Test("The kit's virtio-net program sends 4 frames to the tap and echoes 16 of the host's back",
          arguments: VirtioTransportKind.allCases)
    func kitEcho(transport: VirtioTransportKind) throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        try namespace.addTap("kt0", address: "10.0.0.1/24")
        // The kit's host end: waits for the guest's 4 frames, then pings it 16 times (EtherType 0x88B5 only).
        let peerScript = KitGuest.packageRoot.appendingPathComponent("benchmarks/kit-net-peer.py").path
        let peer = try namespace.start(["python3", peerScript, "echo", "--iface", "kt0", "--guest-frames", "4", "--pings", "16", "--timeout", "60"])
        defer { peer.stop() }
        usleep(500_000)
        let guest = try namespace.run([ProcessTests.binary("swiftlet-vmm"), "--kernel", try KitGuest.program("virtio-net"),
                                       "--cmdline", "send=4 echo=16", "--net", "tap=kt0,mac=52:54:00:12:34:56",
                                       "--transport", transport.rawValue], timeout: 120)
        #expect(guest.status == 0, "stderr: \(guest.errors)\nconsole: \(guest.output.suffix(2000))")
        #expect(guest.output.contains("mac=52:54:00:12:34:56"))
        #expect(guest.output.contains("virtio ready transport=\(transport)"), "console: \(guest.output.prefix(2000))")
        #expect(guest.output.contains("KIT virtio-net sent=4"))
        #expect(guest.output.contains("KIT virtio-net echoed=16"), "console: \(guest.output.suffix(2000))")
        #expect(peer.waitForExit(seconds: 30) == 0, "peer: \(peer.output) \(peer.errors)")
        #expect(peer.output.contains(#""ok": true"#), "peer: \(peer.output)")
    }

    @Test("A tap name that is not a tap stops the VMM before the guest starts, with a message that says why")
    func unusableTap() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        // "lo" exists in every namespace and is not a tap.
        let result = try namespace.run([ProcessTests.binary("swiftlet-vmm"), "--kernel", try KitGuest.program("hello"),
                                        "--net", "tap=lo"], timeout: 60)
        #expect(result.status == 1)
        #expect(result.errors.contains("network interface net0: cannot open tap 'lo'"), "stderr: \(result.errors)")
        #expect(!result.output.contains("KIT hello"), "the guest must not have started")
    }

    @Test("A guest that reboots with --on-reboot restart gets its tap back each time")
    func tapSurvivesRestart() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        try namespace.addTap("tap0", address: "10.0.0.1/24")
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-net-reboot-\(getpid()).log")
        defer { try? FileManager.default.removeItem(at: log) }
        let vmm = try namespace.start([ProcessTests.binary("swiftlet-vmm"), "--kernel", try KitGuest.program("reboot"),
                                       "--on-reboot", "restart", "--serial", "file:\(log.path)", "--net", "tap=tap0"])
        var boots = 0
        for _ in 0..<300 where boots < 3 && vmm.process.isRunning {
            usleep(50_000)
            boots = ((try? String(contentsOf: log, encoding: .utf8)) ?? "").components(separatedBy: "KIT reboot requested").count - 1
        }
        vmm.stop()
        #expect(boots >= 3, "stderr: \(vmm.errors)")
        #expect(vmm.process.terminationStatus == 4, "stopped by SIGTERM, not by a tap error: \(vmm.errors)")
    }

    @Test("tap-fd=N uses a tap the caller opened with vnet headers, and refuses one opened without")
    func adoptedDescriptor() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        // Opens tap0 as a management process would and passes the descriptor on.
        let launcher = """
            import fcntl, os, struct, subprocess, sys
            flags = 0x0002 | 0x1000 | (0x4000 if sys.argv[1] == "vnet" else 0)  # IFF_TAP | IFF_NO_PI [| IFF_VNET_HDR]
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"tap0", flags))  # TUNSETIFF
            sys.exit(subprocess.run(sys.argv[2:] + ["--net", f"tap-fd={fd}"], pass_fds=[fd]).returncode)
            """
        let vmm = [ProcessTests.binary("swiftlet-vmm"), "--kernel", try KitGuest.program("hello")]
        let good = try namespace.run(["python3", "-c", launcher, "vnet"] + vmm, timeout: 60)
        #expect(good.status == 0, "stderr: \(good.errors)")
        #expect(good.output.contains("KIT hello PASS"))
        let bad = try namespace.run(["python3", "-c", launcher, "plain"] + vmm, timeout: 60)
        #expect(bad.status == 1)
        #expect(bad.errors.contains("is not a usable tap: it was opened without IFF_VNET_HDR"), "stderr: \(bad.errors)")
    }

    /// The first whitespace-delimited word after `marker` in `text`.
    static func field(after marker: String, in text: String) -> String? {
        guard let range = text.range(of: marker) else { return nil }
        return text[range.upperBound...].split(whereSeparator: { $0 == " " || $0.isNewline }).first.map(String.init)
    }
}

/// A throwaway network namespace, `swiftlet-test-<random>`.
final class NetworkNamespace {
    let name = "swiftlet-test-\(UInt32.random(in: 0...UInt32.max))"

    static let ipPath = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// `ip netns` works here: ip exists and we may create namespaces.
    static let usable: Bool = {
        guard let ip = ipPath, geteuid() == 0 else { return false }
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: ip)
        probe.arguments = ["netns", "list"]
        probe.standardOutput = FileHandle.nullDevice
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { return false }
        probe.waitUntilExit()
        return probe.terminationStatus == 0 && FileManager.default.fileExists(atPath: "/dev/net/tun")
    }()

    static var shouldRun: Bool { KitGuest.isCI || (KitGuest.kvmUsable && usable) }
    static let skipReason: Comment = "needs /dev/kvm, root, `ip netns` and /dev/net/tun to make a network namespace with a tap; required under CI=true"

    init() throws {
        try ip(["netns", "add", name])
        try ip(["-n", name, "link", "set", "lo", "up"])
    }

    func delete() {
        try? ip(["netns", "delete", name])
    }

    /// A tap inside the namespace, up, with `address` (CIDR) on the host side.
    func addTap(_ tap: String, address: String, multiQueue: Bool = false) throws {
        try ip(["-n", name, "tuntap", "add", "dev", tap, "mode", "tap"] + (multiQueue ? ["multi_queue"] : []))
        try ip(["-n", name, "addr", "add", address, "dev", tap])
        try ip(["-n", name, "link", "set", tap, "up"])
    }

    func ip(_ arguments: [String]) throws {
        let result = try HostCommand.run(Self.ipPath ?? "ip", arguments, timeout: 30)
        guard result.status == 0 else {
            throw KitGuest.KitError(message: "ip \(arguments.joined(separator: " ")) failed: \(result.errors)")
        }
    }

    /// Runs `command` inside the namespace to completion (bounded by `timeout` seconds).
    func run(_ command: [String], timeout: TimeInterval) throws -> HostCommand.Result {
        try HostCommand.run(Self.ipPath ?? "ip", ["netns", "exec", name] + command, timeout: timeout)
    }

    /// Starts `command` inside the namespace in the background.
    func start(_ command: [String]) throws -> HostCommand {
        try HostCommand(Self.ipPath ?? "ip", ["netns", "exec", name] + command)
    }
}

/// A host process whose output goes to temporary files (so a chatty guest
/// console never blocks on a full pipe), stopped with SIGTERM when asked or
/// when its time is up.
final class HostCommand {
    struct Result { let status: Int32; let output: String; let errors: String }

    let process = Process()
    let outputFile: URL
    let errorFile: URL

    init(_ executable: String, _ arguments: [String]) throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-net-\(UUID().uuidString)")
        outputFile = base.appendingPathExtension("out")
        errorFile = base.appendingPathExtension("err")
        _ = FileManager.default.createFile(atPath: outputFile.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errorFile.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = try FileHandle(forWritingTo: outputFile)
        process.standardError = try FileHandle(forWritingTo: errorFile)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: outputFile)
        try? FileManager.default.removeItem(at: errorFile)
    }

    var output: String { (try? String(contentsOf: outputFile, encoding: .utf8)) ?? "" }
    var errors: String { (try? String(contentsOf: errorFile, encoding: .utf8)) ?? "" }

    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }

    /// Waits until stdout contains `text` (or the process ends, or time runs out).
    func waitForOutput(_ text: String, seconds: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if output.contains(text) { return true }
            if !process.isRunning { return output.contains(text) }
            usleep(50_000)
        }
        return false
    }

    /// Waits (bounded) for the process to end; its status, or nil if it is still running.
    func waitForExit(seconds: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    static func run(_ executable: String, _ arguments: [String], timeout: TimeInterval) throws -> Result {
        let command = try HostCommand(executable, arguments)
        let deadline = Date().addingTimeInterval(timeout)
        while command.process.isRunning && Date() < deadline { usleep(50_000) }
        command.stop()
        return Result(status: command.process.terminationStatus, output: command.output, errors: command.errors)
    }
}
