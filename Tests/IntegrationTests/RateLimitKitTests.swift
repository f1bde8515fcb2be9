import Foundation
import RateLimiter
import Testing
@testable import VMM

/// Rate limiters measured end to end with the kit's benchmark programs: the
/// rate the guest sees must be within 10% of the configured one. The
/// bucket's initial contents (size, 0.1 s of traffic here) add about 3% over
/// a 3 s phase, which the tolerance covers.
@Suite("Rate limiters against kit guests", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct RateLimitKitTests {
    /// `key=value` fields of the first line starting with `prefix`.
    static func fields(_ text: String, prefix: String) -> [String: String]? {
        let lines = text.split(whereSeparator: { $0.isNewline }).map { $0.trimmingCharacters(in: .whitespaces) }
        guard let line = lines.first(where: { $0.hasPrefix(prefix) }) else { return nil }
        var result: [String: String] = [:]
        for word in line.split(separator: " ") {
            guard let equals = word.firstIndex(of: "=") else { continue }
            result[String(word[..<equals])] = String(word[word.index(after: equals)...])
        }
        return result
    }

    static func expectWithin10Percent(_ measured: Double?, of rate: Double, _ what: String, _ log: String,
                                      sourceLocation: SourceLocation = #_sourceLocation) {
        guard let measured else {
            Issue.record("\(what): no measurement in \(log.suffix(1500))", sourceLocation: sourceLocation)
            return
        }
        let error = abs(measured - rate) / rate
        #expect(error < 0.10, "\(what): measured \(measured), set \(rate) (\(Int(error * 1000) / 10)% off)", sourceLocation: sourceLocation)
    }

    @Test("virtio-blk: 20 MB/s and 500 ops/s limits hold for 1 MiB reads and writes and for 4 KiB reads (kit blk-bench)",
          .timeLimit(.minutes(3)))
    func block() throws {
        let image = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-rl-\(getpid()).img")
        _ = FileManager.default.createFile(atPath: image.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: image) }
        let handle = try FileHandle(forWritingTo: image)
        try handle.truncate(atOffset: 64 << 20)
        try handle.close()
        // Bandwidth 20 MB/s (2 MB per 100 ms), operations 500/s (50 per 100 ms):
        // 1 MiB requests are bound by the first, 4 KiB ones by the second.
        let limiter = RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 2_000_000, refillTimeMilliseconds: 100),
                                               operations: TokenBucketConfiguration(size: 50, refillTimeMilliseconds: 100))
        var configuration = VMConfiguration(kernelPath: try KitGuest.program("blk-bench"),
                                            commandLine: "rand_ms=3000 seq_ms=3000 qd=32 seq_qd=4", serial: .none)
        configuration.disks = [DiskConfiguration(path: image.path, id: "limited", rateLimiter: limiter)]
        let output = CapturingSerialOutput()
        let machine = try VirtualMachine(configuration: configuration, serialOutput: output)
        let reason = try machine.run()
        let text = output.text
        #expect(reason == .poweredOff, "\(text.suffix(2000))")
        print(text.split(separator: "\n").filter { $0.hasPrefix("BENCH") }.joined(separator: "\n"))
        Self.expectWithin10Percent(Self.fields(text, prefix: "BENCH blk randread4k").flatMap { $0["iops"] }.flatMap(Double.init),
                                   of: 500, "4 KiB random reads, ops/s", text)
        Self.expectWithin10Percent(Self.fields(text, prefix: "BENCH blk seqread1m").flatMap { $0["mb_s"] }.flatMap(Double.init),
                                   of: 20, "1 MiB reads, MB/s", text)
        Self.expectWithin10Percent(Self.fields(text, prefix: "BENCH blk seqwrite1m").flatMap { $0["mb_s"] }.flatMap(Double.init),
                                   of: 20, "1 MiB writes, MB/s", text)
    }

    @Test("virtio-net: 40 Mbit/s limits on TX and RX hold (kit net-bench and its host peer; limiters from a --config-file)",
          .enabled(if: NetworkNamespace.shouldRun, NetworkNamespace.skipReason), .timeLimit(.minutes(3)))
    func network() throws {
        let namespace = try NetworkNamespace()
        defer { namespace.delete() }
        try namespace.addTap("kt0", address: "10.0.0.1/24")
        let peerScript = KitGuest.packageRoot.appendingPathComponent("benchmarks/kit-net-peer.py").path
        let peer = try namespace.start(["python3", peerScript, "bench", "--iface", "kt0", "--rx-seconds", "3", "--timeout", "100"])
        defer { peer.stop() }
        usleep(500_000)
        // 5 MB/s = 40 Mbit/s each way, in 100 ms buckets. Charged bytes include
        // the 12-byte virtio-net header (as Firecracker counts); the guest
        // counts Ethernet bytes: 1514 of every 1526.
        let bucket = #"{"bandwidth": {"size": 500000, "refill_time": 100}}"#
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-rl-net-\(getpid()).json")
        let json = """
            {"boot-source": {"kernel_image_path": "\(try KitGuest.program("net-bench"))", "boot_args": "tx_ms=3000 rx_idle_ms=1500"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
             "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "kt0", "guest_mac": "52:54:00:12:34:56",
                                     "rx_rate_limiter": \(bucket), "tx_rate_limiter": \(bucket)}]}
            """
        try Data(json.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let socket = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-rl-net-\(getpid()).sock").path
        defer { try? FileManager.default.removeItem(atPath: socket) }
        let guest = try namespace.run([ProcessTests.binary("swiftlet-vmm"), "--config-file", file.path, "--api-sock", socket,
                                       "--serial", "stdio"], timeout: 120)
        #expect(guest.status == 0, "stderr: \(guest.errors)\nconsole: \(guest.output.suffix(2000))")
        #expect(peer.waitForExit(seconds: 30) == 0, "peer: \(peer.output) \(peer.errors)")
        print(guest.output.split(separator: "\n").filter { $0.hasPrefix("BENCH net") }.joined(separator: "\n"))
        print(peer.output)
        let rate = 40.0 * 1514 / 1526
        Self.expectWithin10Percent(Self.fields(guest.output, prefix: "BENCH net tx").flatMap { $0["mbit_s"] }.flatMap(Double.init),
                                   of: rate, "TX, Mbit/s (guest)", guest.output)
        Self.expectWithin10Percent(Self.fields(guest.output, prefix: "BENCH net rx").flatMap { $0["mbit_s"] }.flatMap(Double.init),
                                   of: rate, "RX, Mbit/s (guest)", guest.output)
        // The host's view of the TX phase agrees.
        let report = (try? JSONSerialization.jsonObject(with: Data(peer.output.utf8))) as? [String: Any]
        let hostReceived = (report?["host_rx"] as? [String: Any])?["mbps"] as? Double
        Self.expectWithin10Percent(hostReceived, of: rate, "TX, Mbit/s (host)", peer.output)
    }
}
