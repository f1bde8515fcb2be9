import Foundation
import SwiftletClient
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The host tools a network needs (iproute2's `ip`, `nft`, `dnsmasq`), run
/// as child processes with their output captured. Every object they create
/// is named after Swiftlet: bridges as the definition says (`swlbrN` by
/// default), taps `swltapN`, nftables tables `swiftlet-<network>`.
enum HostNetwork {
    struct CommandFailure: Error, CustomStringConvertible {
        let command: String
        let output: String
        var description: String { "`\(command)` failed: \(output.isEmpty ? "no output" : output)" }
    }

    static let searchPath = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]

    static func locate(_ tool: String) -> String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + searchPath
        return path.map { $0 + "/" + tool }.first { access($0, X_OK) == 0 }
    }

    /// Runs `tool` and returns its standard output; a non-zero exit is a
    /// `CommandFailure` carrying stderr (and stdout), trimmed.
    @discardableResult
    static func run(_ tool: String, _ arguments: [String], input: String? = nil) throws -> String {
        guard let binary = locate(tool) else {
            throw CommandFailure(command: tool, output: "\(tool) is not installed (Debian: \(tool == "dnsmasq" ? "dnsmasq-base" : tool == "nft" ? "nftables" : "iproute2"))")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let output = Pipe()
        let errors = Pipe()
        let stdin = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try? stdin.fileHandleForWriting.close()
        // Both pipes drained before the wait, so a chatty tool cannot fill one and stall.
        let errorData = Mutex<Data>(Data())
        let errorsRead = DispatchSemaphore(value: 0)
        Thread {
            errorData.withLock { $0 = errors.fileHandleForReading.readDataToEndOfFile() }
            errorsRead.signal()
        }.start()
        let outputData = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        errorsRead.wait()
        let text = String(decoding: outputData, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            let message = (String(decoding: errorData.withLock { $0 }, as: UTF8.self) + text).trimmingCharacters(in: .whitespacesAndNewlines)
            throw CommandFailure(command: ([tool] + arguments).joined(separator: " "), output: String(message.prefix(2000)))
        }
        return text
    }

    static func interfaceExists(_ name: String) -> Bool { access("/sys/class/net/" + name, F_OK) == 0 }
    static func isBridge(_ name: String) -> Bool { access("/sys/class/net/\(name)/bridge", F_OK) == 0 }

    /// IFF_MULTI_QUEUE (linux/if_tun.h).
    static let multiQueueTapFlag = 0x0100

    /// A tap's IFF_* flags (sysfs `tun_flags`, e.g. `0x1902`); nil when `name` is no tap here.
    static func tapFlags(_ name: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/sys/class/net/\(name)/tun_flags", encoding: .utf8) else { return nil }
        return parseTapFlags(text)
    }

    static func parseTapFlags(_ text: String) -> Int? {
        let digits = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard digits.hasPrefix("0x") else { return nil }
        return Int(digits.dropFirst(2), radix: 16)
    }

    /// Every IPv4 address on the host's interfaces (`ip -j addr`), as (interface, subnet, address).
    static func hostAddresses() throws -> [(interface: String, subnet: IPv4Subnet, address: IPv4)] {
        let text = try run("ip", ["-j", "-4", "addr", "show"])
        guard let interfaces = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] else { return [] }
        var found: [(String, IPv4Subnet, IPv4)] = []
        for interface in interfaces {
            let name = interface["ifname"] as? String ?? "?"
            for entry in interface["addr_info"] as? [[String: Any]] ?? [] {
                guard let local = (entry["local"] as? String).flatMap(IPv4.init), let prefix = entry["prefixlen"] as? Int else { continue }
                found.append((name, IPv4Subnet(network: local, prefix: prefix), local))
            }
        }
        return found
    }

    /// The nftables table of a network: a forward chain that confines the
    /// bridge's traffic (isolated: to the bridge; nat: out from the subnet
    /// and replies back in) and, for nat, masquerading out of the subnet.
    /// Replaced atomically: the `add`/`delete` pair makes the script work
    /// whether or not the table exists.
    static func firewallScript(table: String, bridge: String, subnet: IPv4Subnet, nat: Bool) -> String {
        var forward = ["iifname \"\(bridge)\" oifname \"\(bridge)\" accept"]
        if nat {
            forward += ["iifname \"\(bridge)\" ip saddr \(subnet) accept",
                        "oifname \"\(bridge)\" ip daddr \(subnet) ct state established,related accept"]
        }
        forward += ["iifname \"\(bridge)\" reject", "oifname \"\(bridge)\" reject"]
        var script = """
            add table inet \(table)
            delete table inet \(table)
            table inet \(table) {
              chain forward {
                type filter hook forward priority filter; policy accept;
            \(forward.map { "    " + $0 }.joined(separator: "\n"))
              }

            """
        if nat {
            script += """
                  chain postrouting {
                    type nat hook postrouting priority srcnat; policy accept;
                    ip saddr \(subnet) ip daddr != \(subnet) masquerade
                  }

                """
        }
        return script + "}\n"
    }

    /// dnsmasq's configuration for one network: DHCP (and DNS) on the
    /// bridge only, leases in the network's folder, quiet about DHCP (a
    /// guest's requests must not grow a log without bound).
    static func dnsmasqConfiguration(_ network: ResolvedNetwork, directory: String) -> String {
        var lines = [
            "# Written by swiftletd for network \(network.definition.name); rewritten at each start.",
            "interface=\(network.bridge)",
            "bind-interfaces",
            "except-interface=lo",
            "listen-address=\(network.gateway)",
            "strict-order",
            "domain-needed",
            "bogus-priv",
            "dhcp-authoritative",
            "dhcp-no-override",
            "dhcp-range=\(network.dhcpStart),\(network.dhcpEnd),\(network.subnet.mask),1h",
            "dhcp-lease-max=\(network.dhcpEnd.value - network.dhcpStart.value + 1)",
            "dhcp-leasefile=\(directory)/leases",
            "quiet-dhcp",
            "quiet-dhcp6",
            "quiet-ra",
        ]
        if let subnet6 = network.subnet6 {
            lines += ["enable-ra", "dhcp-range=\(subnet6.address(host: 0x100)),\(subnet6.address(host: 0x1ff)),64,1h"]
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// dnsmasq's lease file: `EXPIRY MAC IP HOSTNAME CLIENT-ID` lines (IPv6 lines are skipped).
    static func parseLeases(_ text: String) -> [NetworkLease] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count >= 4, let expires = Int(fields[0]), IPv4(String(fields[2])) != nil else { return nil }
            return NetworkLease(mac: fields[1].lowercased(), address: String(fields[2]), hostname: fields[3] == "*" ? nil : String(fields[3]), expires: expires)
        }
    }
}

/// A network definition with every default filled in and parsed.
struct ResolvedNetwork: Sendable {
    let definition: NetworkDefinition
    let bridge: String
    let subnet: IPv4Subnet
    let gateway: IPv4
    let dhcpStart: IPv4
    let dhcpEnd: IPv4
    let subnet6: IPv6Subnet?
    var nat: Bool { definition.mode == "nat" }
    var table: String { "swiftlet-" + definition.name }

    /// Fails only on a stored definition the validator would refuse (it checked it on define).
    init(_ definition: NetworkDefinition) throws(DaemonError) {
        let checked = try NetworkValidator.validate(definition, others: [], bridgeInUse: { _ in false })
        guard let bridge = checked.bridge, let subnet = IPv4Subnet(checked.subnet), let gateway = checked.gateway.flatMap(IPv4.init),
              let start = checked.dhcpStart.flatMap(IPv4.init), let end = checked.dhcpEnd.flatMap(IPv4.init) else {
            throw .internal("network '\(definition.name)' has an incomplete stored definition")
        }
        self.definition = checked
        self.bridge = bridge
        self.subnet = subnet
        self.gateway = gateway
        dhcpStart = start
        dhcpEnd = end
        subnet6 = checked.subnet6.flatMap(IPv6Subnet.init)
    }
}

/// Checks a network definition before it is stored and fills in its defaults.
enum NetworkValidator {
    static func validate(_ input: NetworkDefinition, others: [NetworkDefinition], bridgeInUse: (String) -> Bool) throws(DaemonError) -> NetworkDefinition {
        var definition = input
        let p = DefinitionValidator.printable
        try DefinitionValidator.validateName(definition.name, what: "network")
        if let uuid = definition.uuid {
            guard let parsed = UUID(uuidString: uuid) else { throw .badRequest("invalid uuid '\(p(uuid, 80))': expected the 8-4-4-4-12 hex form") }
            definition.uuid = parsed.uuidString.lowercased()
        } else {
            definition.uuid = UUID().uuidString.lowercased()
        }
        guard ["nat", "isolated"].contains(definition.mode) else {
            throw .badRequest("invalid mode '\(p(definition.mode, 80))': expected nat (guests reach out, masqueraded) or isolated (guests reach each other and the host only)")
        }
        guard let subnet = IPv4Subnet(definition.subnet) else {
            throw .badRequest("invalid subnet '\(p(definition.subnet, 80))': expected an IPv4 network in CIDR form, like 192.168.122.0/24")
        }
        guard (8...30).contains(subnet.prefix) else {
            throw .badRequest("invalid subnet '\(definition.subnet)': the prefix must be 8 to 30 (a /\(subnet.prefix) leaves no room for a gateway and guests)")
        }
        guard subnet.network.value == IPv4(definition.subnet.split(separator: "/")[0].description)?.value else {
            throw .badRequest("invalid subnet '\(definition.subnet)': host bits are set; the network is \(subnet)")
        }
        definition.subnet = subnet.description
        let gateway = try address(definition.gateway, field: "gateway", in: subnet) ?? subnet.firstHost
        definition.gateway = gateway.description
        let start = try address(definition.dhcpStart, field: "dhcp_start", in: subnet) ?? IPv4(gateway.value == subnet.lastHost.value ? subnet.firstHost.value : gateway.value + 1)
        let end = try address(definition.dhcpEnd, field: "dhcp_end", in: subnet) ?? subnet.lastHost
        guard start <= end else { throw .badRequest("dhcp_start \(start) is after dhcp_end \(end)") }
        guard !(start...end).contains(gateway) else {
            throw .badRequest("the DHCP range \(start)-\(end) contains the gateway \(gateway); start it after the gateway")
        }
        definition.dhcpStart = start.description
        definition.dhcpEnd = end.description
        if let text = definition.subnet6 {
            guard let subnet6 = IPv6Subnet(text) else {
                throw .badRequest("invalid subnet6 '\(p(text, 80))': expected an IPv6 /64 with no host bits, like fd00:1:2:3::/64")
            }
            definition.subnet6 = subnet6.description
        }
        for other in others where other.name != definition.name {
            if let theirs = IPv4Subnet(other.subnet), theirs.overlaps(subnet) {
                throw .conflict("subnet \(subnet) overlaps network '\(other.name)' (\(theirs)); choose a subnet no other network uses")
            }
            if let mine = definition.subnet6, mine == other.subnet6 {
                throw .conflict("subnet6 \(mine) is already used by network '\(other.name)'; choose another")
            }
        }
        if let bridge = definition.bridge {
            try DefinitionValidator.validateInterfaceName(bridge, field: "bridge")
            guard bridge.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "_-.".unicodeScalars.contains($0) }),
                  !bridge.hasPrefix("swltap") else {
                throw .badRequest("invalid bridge '\(p(bridge, 80))': use A-Z a-z 0-9 _ - . (not swltap..., the names of VM taps)")
            }
            if let other = others.first(where: { $0.name != definition.name && $0.bridge == bridge }) {
                throw .conflict("bridge \(bridge) is already used by network '\(other.name)'; choose another or leave bridge out")
            }
        } else {
            let taken = Set(others.filter { $0.name != definition.name }.compactMap(\.bridge))
            definition.bridge = (0...).lazy.map { "swlbr\($0)" }.first { !taken.contains($0) && !bridgeInUse($0) }
        }
        return definition
    }

    static func address(_ text: String?, field: String, in subnet: IPv4Subnet) throws(DaemonError) -> IPv4? {
        guard let text else { return nil }
        guard let address = IPv4(text) else {
            throw .badRequest("invalid \(field) '\(DefinitionValidator.printable(text))': expected an IPv4 address like 192.168.122.1")
        }
        guard subnet.isHost(address) else {
            throw .badRequest("\(field) \(address) is not a host address of \(subnet) (\(subnet.firstHost) to \(subnet.lastHost))")
        }
        return address
    }
}
