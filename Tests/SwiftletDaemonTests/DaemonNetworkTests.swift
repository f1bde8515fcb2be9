import Foundation
import SwiftletClient
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// swiftletd's networks (docs/networks.md): definitions and their
/// refusals, then real networks with DHCP, NAT and isolation, run entirely
/// inside network namespaces the test creates and deletes.
@Suite("swiftletd's networks", .serialized)
struct DaemonNetworkTests {
    @discardableResult
    static func ip(_ arguments: [String]) -> (status: Int32, output: String) { TestEnvironment.run("/usr/sbin/ip", arguments) }

    @Test("definitions: defaults are filled in, a bad field is named, an overlapping subnet or a taken bridge is refused; NICs name a tap or a network")
    func definitions() throws {
        let daemon = try DaemonHarness(label: "net-definitions")
        defer { daemon.tearDown() }
        let lab = try daemon.client.defineNetwork(NetworkDefinition(name: "lab", subnet: "10.10.0.0/24"))
        #expect(lab.definition.gateway == "10.10.0.1" && lab.definition.dhcpStart == "10.10.0.2" && lab.definition.dhcpEnd == "10.10.0.254")
        #expect(lab.definition.mode == "nat" && lab.bridge.hasPrefix("swlbr") && !lab.active && lab.definition.uuid != nil)
        #expect(try daemon.client.networks().map(\.definition.name) == ["lab"], "no default network without --netns in tests")

        func refusal(_ json: String) throws -> (Int, String) {
            let response = try daemon.http.request("POST", "/v1/networks", body: Data(json.utf8))
            return (response.status, response.text)
        }
        let cases: [(String, Int, String)] = [
            (#"{"name": "b", "subnet": "10.10.0.128/25"}"#, 409, "overlaps network 'lab'"),
            (#"{"name": "b", "subnet": "10.20.0.0/24", "bridge": "\#(lab.bridge)"}"#, 409, "already used by network 'lab'"),
            (#"{"name": "b", "subnet": "10.20.0.1/24"}"#, 400, "host bits"),
            (#"{"name": "b", "subnet": "10.20.0.0/31"}"#, 400, "prefix must be 8 to 30"),
            (#"{"name": "b", "subnet": "10.020.0.0/24"}"#, 400, "CIDR"),
            (#"{"name": "b", "subnet": "10.20.0.0/24", "mode": "bridged"}"#, 400, "nat"),
            (#"{"name": "b", "subnet": "10.20.0.0/24", "gateway": "10.21.0.1"}"#, 400, "not a host address of 10.20.0.0/24"),
            (#"{"name": "b", "subnet": "10.20.0.0/24", "dhcp_start": "10.20.0.1"}"#, 400, "contains the gateway"),
            (#"{"name": "b", "subnet": "10.20.0.0/24", "subnet6": "fd00::/48"}"#, 400, "subnet6"),
            (#"{"name": "b", "subnet": "10.20.0.0/24", "vlan": 3}"#, 400, "vlan"),
            (#"{"name": "lab", "subnet": "10.30.0.0/24"}"#, 409, "already defined"),
        ]
        for (json, status, text) in cases {
            let (got, message) = try refusal(json)
            #expect(got == status && message.contains(text), "\(json): \(got) \(message)")
        }
        #expect(try daemon.http.request("GET", "/v1/networks/nowhere").status == 404)

        // NICs: exactly one of tap and network; MACs generated, unique.
        var definition = try daemon.definition("two-nics")
        definition.nics = [VMDefinition.NIC(network: "lab"), VMDefinition.NIC(network: "lab")]
        let defined = try daemon.client.define(definition)
        let macs = defined.definition.nics.compactMap(\.mac)
        #expect(macs.count == 2 && Set(macs).count == 2 && macs.allSatisfy { $0.hasPrefix("52:54:00:") }, "\(macs)")
        for nic in [#"{}"#, #"{"tap": "t0", "network": "lab"}"#] {
            let json = #"{"name": "bad-nic", "kernel": "\#(definition.kernel ?? "")", "nics": [\#(nic)]}"#
            let response = try daemon.http.request("POST", "/v1/vms", body: Data(json.utf8))
            #expect(response.status == 400 && response.text.contains("nics[0]"), "\(nic): \(response.text)")
        }
        // Starting on an inactive network is refused before anything runs.
        let start = try daemon.cli(["start", "two-nics"])
        #expect(start.status == 4 && start.stderr.contains("net-start lab"), "\(start)")
        definition = try daemon.definition("lost")
        definition.nics = [VMDefinition.NIC(network: "missing")]
        _ = try daemon.client.define(definition)
        let lost = try daemon.cli(["start", "lost"])
        #expect(lost.status == 1 && lost.stderr.contains("'missing', which is not defined"), "\(lost)")
        #expect(try daemon.cli(["net-undefine", "lab"]).status == 0)
    }

    @Test("in a namespace: the default NAT network and an isolated one; two guests get leases and reach each other and, through NAT only, beyond; a daemon crash re-adopts; destroy leaves nothing",
          .timeLimit(.minutes(10)),
          .enabled(if: geteuid() == 0 && TestEnvironment.guestsRun && (TestEnvironment.linuxGuestBuilt || TestEnvironment.isCI),
                   "needs root, /dev/kvm and the default guest (guest/build-image)"))
    func guestsOnNetworks() throws {
        let namespace = "swl-net-\(getpid())"
        let outside = "swl-out-\(getpid())"
        Self.ip(["netns", "add", namespace])
        Self.ip(["netns", "add", outside])
        defer {
            Self.ip(["netns", "del", namespace])
            Self.ip(["netns", "del", outside])
        }
        Self.ip(["-n", namespace, "link", "set", "lo", "up"])
        // "Beyond the host": a peer in a second namespace, which has no route back to the guests' subnets.
        #expect(Self.ip(["-n", namespace, "link", "add", "swlv0", "type", "veth", "peer", "name", "swlv1", "netns", outside]).status == 0)
        Self.ip(["-n", namespace, "addr", "add", "10.99.0.1/24", "dev", "swlv0"])
        Self.ip(["-n", namespace, "link", "set", "swlv0", "up"])
        Self.ip(["-n", outside, "addr", "add", "10.99.0.2/24", "dev", "swlv1"])
        Self.ip(["-n", outside, "link", "set", "swlv1", "up"])

        let daemon = try DaemonHarness(label: "networks", networkNamespace: namespace)
        defer {
            daemon.tearDown()
            // dnsmasq outlives a daemon, as VMs do; nothing of this test may.
            let kill = Process()
            kill.executableURL = URL(fileURLWithPath: "/usr/bin/pkill")
            kill.arguments = ["-f", "--", "--conf-file=" + daemon.stateDirectory]
            try? kill.run()
            kill.waitUntilExit()
        }
        let initial = try daemon.client.networks()
        #expect(initial.map(\.definition.name) == ["default"] && initial.first?.active == true, "\(initial)")
        #expect(initial.first?.definition.subnet == "192.168.122.0/24" && initial.first?.definition.autostart == true)
        let dnsmasq = try #require(initial.first?.dnsmasqPid)
        #expect(Self.ip(["-n", namespace, "-br", "addr", "show", "swlbr0"]).output.contains("192.168.122.1/24"))

        let file = daemon.directory + "/iso.yaml"
        try "name: iso\nmode: isolated\nsubnet: 10.77.0.0/24\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try daemon.cli(["net-define", file]).status == 0)
        #expect(try daemon.cli(["net-start", "iso"]).status == 0)
        try "name: clash\nsubnet: 10.77.0.128/25\n".write(toFile: file, atomically: true, encoding: .utf8)
        let clash = try daemon.cli(["net-define", file])
        #expect(clash.status == 4 && clash.stderr.contains("overlaps network 'iso'"), "\(clash)")
        // A subnet a host interface has is refused at start.
        try "name: taken\nsubnet: 10.99.0.0/16\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try daemon.cli(["net-define", file]).status == 0)
        let taken = try daemon.cli(["net-start", "taken"])
        #expect(taken.status == 4 && taken.stderr.contains("swlv0"), "\(taken)")

        let guest = TestEnvironment.linuxGuestDirectory
        let commandLine = (try String(contentsOfFile: guest + "/cmdline", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)
        for (name, network) in [("a", "default"), ("b", "default"), ("c", "iso")] {
            _ = try daemon.client.define(VMDefinition(name: name, memoryMiB: 128, kernel: guest + "/vmlinux", initrd: guest + "/initramfs.cpio",
                                                      cmdline: commandLine + " swiftlet.agent swiftlet.dhcp", nics: [.init(network: network)]))
            let started = try daemon.cli(["start", name])
            #expect(started.status == 0, "\(started)")
        }
        // A QEMU VM on the same network (docs/drivers.md): a single-queue tap on the same bridge.
        let withQEMU = access("/usr/bin/qemu-system-x86_64", X_OK) == 0 || TestEnvironment.isCI
        if withQEMU {
            _ = try daemon.client.define(VMDefinition(name: "q", hypervisor: "qemu", memoryMiB: 128, kernel: guest + "/vmlinux", initrd: guest + "/initramfs.cpio",
                                                      cmdline: commandLine + " swiftlet.dhcp", nics: [.init(network: "default")]))
            let started = try daemon.cli(["start", "q"])
            #expect(started.status == 0, "\(started)")
        }
        let names = withQEMU ? ["a", "b", "c", "q"] : ["a", "b", "c"]
        // Each guest's DHCP lease, as domifaddr reports it.
        var addresses: [String: String] = [:]
        let deadline = Date().addingTimeInterval(300)
        while addresses.count < names.count && Date() < deadline {
            for name in names where addresses[name] == nil {
                if let address = try daemon.client.interfaces(of: name).first?.addresses.first { addresses[name] = address }
            }
            usleep(500_000)
        }
        try #require(addresses.count == names.count, "leases: \(addresses); daemon log: \(daemon.log().suffix(2000))")
        #expect(addresses["a"]?.hasPrefix("192.168.122.") == true && addresses["c"]?.hasPrefix("10.77.0.") == true, "\(addresses)")
        if let tap = try daemon.client.interfaces(of: "a").first?.tap {
            let details = Self.ip(["-n", namespace, "-d", "link", "show", tap]).output
            #expect(details.contains("multi_queue") && details.contains("master swlbr0"), "\(details)")
        } else {
            Issue.record("no tap reported for a running VM")
        }
        let text = try daemon.cli(["domifaddr", "a"]).stdout
        #expect(text.contains("default") && text.contains("swltap") && text.contains(addresses["a"] ?? "?"), "\(text)")

        func ping(from vm: String, _ target: String) throws -> Int32 {
            var result = try daemon.cli(["exec", vm, "--", "ping", "-c", "1", "-W", "3", target])
            // The first packet may wait for ARP while the guest's agent is still settling in: one retry.
            if result.status != 0 { result = try daemon.cli(["exec", vm, "--", "ping", "-c", "1", "-W", "3", target]) }
            return result.status
        }
        let addressOfB = String(addresses["b"]?.split(separator: "/").first ?? "")
        #expect(try ping(from: "a", addressOfB) == 0, "a reaches b on the same network")
        #expect(try ping(from: "a", "10.99.0.2") == 0, "NAT: a reaches beyond the host")
        #expect(try ping(from: "c", "10.77.0.1") == 0, "isolated: c reaches its gateway")
        #expect(try ping(from: "c", "10.99.0.2") != 0, "isolated: c does not reach beyond the host")
        if withQEMU {
            #expect(try ping(from: "a", String(addresses["q"]?.split(separator: "/").first ?? "")) == 0, "a Swiftlet VM reaches a QEMU VM")
            let tap = try daemon.client.interfaces(of: "q").first?.tap ?? "-"
            let details = Self.ip(["-n", namespace, "-d", "link", "show", tap]).output
            #expect(!details.contains("multi_queue") && details.contains("master swlbr0"), "\(details)")
        }

        let busy = try daemon.cli(["net-destroy", "default"])
        #expect(busy.status == 4 && busy.stderr.contains("a, b"), "\(busy)")
        if withQEMU { #expect(try daemon.cli(["destroy", "q"]).status == 0) }

        // A crash: the restarted daemon re-adopts the network, its dnsmasq and the VMs' taps.
        daemon.stop(signal: SIGKILL)
        try daemon.start()
        let adopted = try daemon.client.network("default")
        #expect(adopted.active && adopted.dnsmasqPid == dnsmasq && adopted.vms == ["a", "b"], "\(adopted)")
        #expect(try ping(from: "a", addressOfB) == 0, "still connected after the daemon restart")

        for name in ["a", "b", "c"] { #expect(try daemon.cli(["destroy", name]).status == 0) }
        #expect(!Self.ip(["-n", namespace, "link"]).output.contains("swltap"), "taps removed with their VMs")
        for name in ["default", "iso"] { #expect(try daemon.cli(["net-destroy", name]).status == 0) }
        let links = Self.ip(["-n", namespace, "link"]).output
        #expect(!links.contains("swlbr") && !links.contains("swltap"), "\(links)")
        let listed = Self.ip(["netns", "exec", namespace, "nft", "list", "tables"]).output
        #expect(!listed.contains("swiftlet"), "\(listed)")
        #expect(kill(pid_t(dnsmasq), 0) != 0, "dnsmasq stopped")
    }

    /// The tap queues a process has open: its /dev/net/tun descriptors attached to `tap` (fdinfo's `iff:` line).
    static func tapQueues(of pid: Int32, tap: String) -> Int {
        let folder = "/proc/\(pid)/fdinfo"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return entries.filter { entry in
            let text = (try? String(contentsOfFile: folder + "/" + entry, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").contains { $0.hasPrefix("iff:") && $0.split(separator: "\t").last.map(String.init) == tap }
        }.count
    }

    @Test("in a namespace: NICs with queues 2 and mtu 9000 on taps the user made multi-queue or left to the VMM run with one tap queue per pair; a single-queue tap is refused at start with the fix",
          .timeLimit(.minutes(3)),
          .enabled(if: geteuid() == 0 && TestEnvironment.guestsRun, "needs root (a network namespace and taps) and /dev/kvm"))
    func multiqueueTaps() throws {
        let namespace = "swl-mq-\(getpid())"
        Self.ip(["netns", "add", namespace])
        defer { Self.ip(["netns", "del", namespace]) }
        Self.ip(["-n", namespace, "link", "set", "lo", "up"])
        #expect(Self.ip(["-n", namespace, "tuntap", "add", "dev", "swlmq0", "mode", "tap", "vnet_hdr", "multi_queue"]).status == 0)
        #expect(Self.ip(["-n", namespace, "tuntap", "add", "dev", "swlsq0", "mode", "tap", "vnet_hdr"]).status == 0)
        // Unjailed, so that the VMM (root in the namespace) may make the tap that does not exist yet.
        // No default network: this test needs none, and its dnsmasq would outlive the daemon.
        let daemon = try DaemonHarness(label: "mq", extraArguments: ["--no-jail", "--no-default-network"], networkNamespace: namespace)
        defer { daemon.tearDown() }
        let kernel = try TestEnvironment.kitProgram("halt")
        _ = try daemon.client.define(VMDefinition(name: "mq", cpus: 2, memoryMiB: 64, kernel: kernel,
                                                  nics: [.init(tap: "swlmq0", queues: 2, mtu: 9000), .init(tap: "swlnew0", queues: 2)]))
        _ = try daemon.client.define(VMDefinition(name: "sq", memoryMiB: 64, kernel: kernel, nics: [.init(tap: "swlsq0", queues: 2)]))

        let started = try daemon.cli(["start", "mq"])
        #expect(started.status == 0, "\(started); daemon log: \(daemon.log().suffix(2000))")
        #expect(try daemon.consoleContains("mq", "KIT halt ready"))
        let info = try daemon.client.get("mq")
        #expect(info.state == .running)
        let pid = try #require(info.pid)
        #expect(Self.tapQueues(of: pid, tap: "swlmq0") == 2 && Self.tapQueues(of: pid, tap: "swlnew0") == 2)
        let made = Self.ip(["-n", namespace, "-d", "link", "show", "swlnew0"]).output
        #expect(made.contains("multi_queue"), "\(made)")
        let shown = try daemon.cli(["info", "mq"]).stdout
        #expect(shown.contains("swlmq0") && shown.contains("(2 queues) (MTU 9000)"), "\(shown)")

        let refused = try daemon.cli(["start", "sq"])
        #expect(refused.status != 0 && refused.stderr.contains("tap 'swlsq0' is single-queue")
                && refused.stderr.contains("ip tuntap add dev swlsq0 mode tap multi_queue"), "\(refused)")
        #expect(try daemon.client.get("sq").state == .shutOff)

        #expect(try daemon.cli(["destroy", "mq"]).status == 0)
    }
}
