import ArgumentParser
import Foundation
import SwiftletClient

// `net-*` verbs and `domifaddr`, as virsh has them (docs/networks.md).

struct NetDefine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "net-define",
        abstract: "Define a network from a JSON or YAML file.",
        discussion: """
            A network is a bridge with a gateway address, DHCP and DNS (dnsmasq) and, in nat mode, \
            masquerading out through the host. Example file:

              name: lab
              mode: nat              # or isolated
              subnet: 10.10.0.0/24
              # gateway: 10.10.0.1   dhcp_start: 10.10.0.2   dhcp_end: 10.10.0.254
              # bridge: swlbr1       subnet6: fd00:10:10::/64   autostart: true

            Then `swiftlet net-start lab`, and give a VM `nics: [{network: lab}]`.
            """)
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The network definition file.") var file: String
    func run() throws {
        let body = try definitionJSON(fromFile: file)
        try withDaemon {
            let info = try daemon.client.defineNetwork(json: body)
            try daemon.report(info, "defined network \(info.definition.name) (\(info.definition.subnet), bridge \(info.bridge)); `swiftlet net-start \(info.definition.name)` starts it")
        }
    }
}

struct NetUndefine: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "net-undefine", abstract: "Remove a network's definition (it must be inactive).")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The network's name.") var name: String
    func run() throws {
        try withDaemon {
            try daemon.client.undefineNetwork(name)
            print(daemon.json ? "{}" : "undefined network \(name)")
        }
    }
}

struct NetStart: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "net-start", abstract: "Start a network: its bridge, firewall rules and dnsmasq.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The network's name.") var name: String
    func run() throws {
        try withDaemon {
            let info = try daemon.client.startNetwork(name)
            try daemon.report(info, "network \(name) started (bridge \(info.bridge), \(info.definition.subnet))")
        }
    }
}

struct NetDestroy: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "net-destroy",
                                                    abstract: "Stop a network: remove its bridge, firewall rules and dnsmasq (refused while VMs use it).")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The network's name.") var name: String
    func run() throws {
        try withDaemon {
            let info = try daemon.client.destroyNetwork(name)
            try daemon.report(info, "network \(name) destroyed")
        }
    }
}

struct NetList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "net-list", abstract: "List active networks (--all: every defined network).")
    @OptionGroup var daemon: DaemonOptions
    @Flag(name: .shortAndLong, help: "Include inactive networks.") var all = false
    func run() throws {
        try withDaemon {
            let networks = try daemon.client.networks().filter { all || $0.active }
            if daemon.json { try daemon.printJSON(networks); return }
            print(Format.table(["NAME", "STATE", "AUTOSTART", "MODE", "SUBNET", "BRIDGE", "VMS"], networks.map {
                [$0.definition.name, $0.active ? "active" : "inactive", $0.definition.autostart ? "yes" : "no", $0.definition.mode,
                 $0.definition.subnet, $0.bridge, String($0.vms.count)]
            }))
        }
    }
}

struct NetInfo: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "net-info", abstract: "Show a network's definition, state and DHCP leases.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The network's name.") var name: String
    func run() throws {
        try withDaemon {
            let info = try daemon.client.network(name)
            if daemon.json { try daemon.printJSON(info); return }
            let d = info.definition
            var rows: [(String, String)] = [("Name", d.name), ("UUID", d.uuid ?? "-"), ("State", info.active ? "active" : "inactive"),
                                            ("Autostart", d.autostart ? "yes" : "no"), ("Mode", d.mode), ("Bridge", info.bridge),
                                            ("Subnet", d.subnet), ("Gateway", d.gateway ?? "-"), ("DHCP", "\(d.dhcpStart ?? "-") - \(d.dhcpEnd ?? "-")")]
            if let subnet6 = d.subnet6 { rows.append(("Subnet6", subnet6)) }
            if let pid = info.dnsmasqPid { rows.append(("dnsmasq", "pid \(pid)")) }
            rows.append(("VMs", info.vms.isEmpty ? "-" : info.vms.joined(separator: ", ")))
            for lease in info.leases { rows.append(("Lease", "\(lease.address) \(lease.mac)\(lease.hostname.map { " " + $0 } ?? "")")) }
            let width = rows.map(\.0.count).max() ?? 0
            for (key, value) in rows { print(key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value) }
        }
    }
}

struct NetAutostart: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "net-autostart", abstract: "Start a network whenever swiftletd starts (--disable: don't).")
    @OptionGroup var daemon: DaemonOptions
    @Flag(help: "Turn autostart off.") var disable = false
    @Argument(help: "The network's name.") var name: String
    func run() throws {
        try withDaemon {
            let info = try daemon.client.setNetworkAutostart(name, !disable)
            try daemon.report(info, "network \(name) autostart \(disable ? "off" : "on")")
        }
    }
}

struct DomIfAddr: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "domifaddr",
                                                    abstract: "Show a VM's interfaces and the addresses its networks' DHCP gave them.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The VM's name.") var name: String
    func run() throws {
        try withDaemon {
            let interfaces = try daemon.client.interfaces(of: name)
            if daemon.json { try daemon.printJSON(interfaces); return }
            print(Format.table(["INTERFACE", "MAC", "NETWORK", "TAP", "ADDRESS"], interfaces.map {
                [$0.id, $0.mac ?? "-", $0.network ?? "-", $0.tap ?? "-", $0.addresses.isEmpty ? "-" : $0.addresses.joined(separator: " ")]
            }))
        }
    }
}
