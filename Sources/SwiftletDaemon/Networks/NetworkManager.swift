import Foundation
import Logging
import Synchronization
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// Runs swiftletd's networks (docs/networks.md): per active network a
/// bridge with the gateway address, an nftables table and one supervised
/// dnsmasq; per VM interface on a network a persistent tap on its bridge.
/// What it creates on the host is recorded (the database's `active` flag,
/// pid files, each VM's `taps` file) so that a restarted daemon re-adopts it
/// or removes it, never leaves it behind.
public final class NetworkManager: Sendable {
    let store: DefinitionStore
    let directory: String
    let logger: Logger
    /// Who owns the taps (the jailed VMM's user, which attaches without CAP_NET_ADMIN).
    let tapOwner: (uid: UInt32, gid: UInt32)?
    /// Lifecycle changes one at a time: start, destroy, tap creation.
    let operations = Mutex<Void>(())
    let dnsmasqs = Mutex<[String: Dnsmasq]>([:])
    /// The taps of running VMs: VM name -> (network, tap) per network NIC.
    let taps = Mutex<[String: [(network: String, tap: String)]]>([:])

    struct Dnsmasq: Sendable {
        var pid: pid_t
        /// Restarts within the last minute, to give up on one that keeps dying.
        var restarts: [Double] = []
    }

    public init(store: DefinitionStore, stateDirectory: String, tapOwner: (uid: UInt32, gid: UInt32)?, logger: Logger) {
        self.store = store
        directory = stateDirectory + "/networks"
        self.tapOwner = tapOwner
        self.logger = logger
    }

    func folder(_ name: String) -> String { directory + "/" + name }

    // MARK: definitions

    func rows() throws(DaemonError) -> [DefinitionStore.NetworkRow] {
        do { return try store.networks() } catch { throw .internal("reading the database: \(error)") }
    }

    func row(_ name: String) throws(DaemonError) -> DefinitionStore.NetworkRow {
        try DefinitionValidator.validateName(name, what: "network")
        let found: DefinitionStore.NetworkRow?
        do { found = try store.network(name) } catch { throw .internal("reading the database: \(error)") }
        guard let found else {
            throw .notFound("no network named '\(DefinitionValidator.printable(name))'; `swiftlet net-list --all` shows defined networks")
        }
        return found
    }

    public func define(_ input: NetworkDefinition) throws(DaemonError) -> NetworkInfo {
        try operations.withLock { _ throws(DaemonError) in
            let definition = try NetworkValidator.validate(input, others: try rows().map(\.definition), bridgeInUse: HostNetwork.interfaceExists)
            do { try store.insertNetwork(definition) } catch DefinitionStore.Failure.duplicate {
                throw .conflict("a network named '\(definition.name)' (or with uuid \(definition.uuid ?? "")) is already defined")
            } catch {
                throw .internal("storing the network: \(error)")
            }
            logger.info("network defined", metadata: ["network": "\(definition.name)", "subnet": "\(definition.subnet)"])
            return info(DefinitionStore.NetworkRow(definition: definition, active: false))
        }
    }

    public func undefine(_ name: String) throws(DaemonError) {
        try operations.withLock { _ throws(DaemonError) in
            let row = try row(name)
            guard !row.active else { throw .conflict("network '\(name)' is active; `swiftlet net-destroy \(name)` first, then undefine it") }
            do { try store.deleteNetwork(name) } catch { throw .internal("deleting the network: \(error)") }
            try? FileManager.default.removeItem(atPath: folder(name))
            logger.info("network undefined", metadata: ["network": "\(name)"])
        }
    }

    public func setAutostart(_ name: String, _ enabled: Bool) throws(DaemonError) -> NetworkInfo {
        try operations.withLock { _ throws(DaemonError) in
            var row = try row(name)
            row.definition.autostart = enabled
            do { try store.replaceNetwork(row.definition) } catch { throw .internal("storing the network: \(error)") }
            return info(row)
        }
    }

    public func list() throws(DaemonError) -> [NetworkInfo] { try rows().map(info) }

    public func get(_ name: String) throws(DaemonError) -> NetworkInfo { info(try row(name)) }

    func info(_ row: DefinitionStore.NetworkRow) -> NetworkInfo {
        let name = row.definition.name
        let users = taps.withLock { table in table.filter { $0.value.contains { $0.network == name } }.map(\.key).sorted() }
        return NetworkInfo(definition: row.definition, active: row.active, bridge: row.definition.bridge ?? "",
                           dnsmasqPid: row.active ? dnsmasqs.withLock { $0[name]?.pid }.map(Int.init) : nil,
                           vms: users, leases: leases(name))
    }

    public func leases(_ name: String) -> [NetworkLease] {
        guard let text = try? String(contentsOfFile: folder(name) + "/leases", encoding: .utf8) else { return [] }
        return HostNetwork.parseLeases(text)
    }

    // MARK: start and destroy

    public func start(_ name: String) throws(DaemonError) -> NetworkInfo {
        try operations.withLock { _ throws(DaemonError) in
            let row = try row(name)
            if row.active { throw .conflict("network '\(name)' is already active; `swiftlet net-destroy \(name)` stops it") }
            let network = try ResolvedNetwork(row.definition)
            try Self.checkHostTools(for: name)
            try checkHostConflicts(network)
            do throws(DaemonError) { try bringUp(network) } catch {
                tearDown(network)
                throw error
            }
            do { try store.setNetworkActive(name, true) } catch {
                tearDown(network)
                throw .internal("recording network '\(name)' as active: \(error)")
            }
            logger.info("network started", metadata: ["network": "\(name)", "bridge": "\(network.bridge)"])
            return info(DefinitionStore.NetworkRow(definition: row.definition, active: true))
        }
    }

    public func destroy(_ name: String) throws(DaemonError) -> NetworkInfo {
        try operations.withLock { _ throws(DaemonError) in
            let row = try row(name)
            guard row.active else { throw .conflict("network '\(name)' is not active; `swiftlet net-start \(name)` starts it") }
            let users = taps.withLock { table in table.filter { $0.value.contains { $0.network == name } }.map(\.key).sorted() }
            guard users.isEmpty else {
                throw .conflict("network '\(name)' is in use by running VM\(users.count == 1 ? "" : "s") \(users.joined(separator: ", ")); stop \(users.count == 1 ? "it" : "them") first")
            }
            tearDown(try ResolvedNetwork(row.definition))
            do { try store.setNetworkActive(name, false) } catch { throw .internal("recording network '\(name)' as inactive: \(error)") }
            logger.info("network destroyed", metadata: ["network": "\(name)"])
            return info(DefinitionStore.NetworkRow(definition: row.definition, active: false))
        }
    }

    /// The host tools a network needs, with the Debian package that has each.
    static let hostTools = [("ip", "iproute2"), ("nft", "nftables"), ("dnsmasq", "dnsmasq-base")]

    /// A missing tool is the host's state, not a fault in the request or the
    /// daemon: 503 naming the tool and its package, before anything is made.
    static func checkHostTools(for name: String, locate: (String) -> String? = HostNetwork.locate) throws(DaemonError) {
        let missing = hostTools.filter { locate($0.0) == nil }
        guard missing.isEmpty else {
            throw .unavailable("cannot start network '\(name)': \(missing.map(\.0).joined(separator: ", ")) not installed (Debian: apt install \(missing.map(\.1).joined(separator: " ")))")
        }
    }

    /// Refuses a subnet that one of the host's own interfaces (not this network's bridge) already has.
    func checkHostConflicts(_ network: ResolvedNetwork) throws(DaemonError) {
        let addresses: [(interface: String, subnet: IPv4Subnet, address: IPv4)]
        do { addresses = try HostNetwork.hostAddresses() } catch { throw .unavailable("cannot list the host's addresses: \(error)") }
        if let clash = addresses.first(where: { $0.interface != network.bridge && $0.subnet.overlaps(network.subnet) }) {
            throw .conflict("cannot start network '\(network.definition.name)': its subnet \(network.subnet) overlaps \(clash.address)/\(clash.subnet.prefix) on this host's interface \(clash.interface); choose another subnet (`swiftlet net-define` a new network)")
        }
    }

    /// Creates (or, re-adopting, completes) what an active network needs. Idempotent.
    func bringUp(_ network: ResolvedNetwork) throws(DaemonError) {
        let bridge = network.bridge
        do {
            if HostNetwork.interfaceExists(bridge) {
                guard HostNetwork.isBridge(bridge) else {
                    throw DaemonError.conflict("cannot start network '\(network.definition.name)': \(bridge) exists on this host and is not a bridge; name another bridge")
                }
            } else {
                try HostNetwork.run("ip", ["link", "add", bridge, "type", "bridge"])
            }
            try HostNetwork.run("ip", ["addr", "replace", "\(network.gateway)/\(network.subnet.prefix)", "dev", bridge])
            if let subnet6 = network.subnet6 {
                do { try HostNetwork.run("ip", ["-6", "addr", "replace", subnet6.address(host: 1) + "/64", "dev", bridge]) } catch {
                    logger.warning("IPv6 address not set", metadata: ["network": "\(network.definition.name)", "error": "\(error)"])
                }
            }
            try HostNetwork.run("ip", ["link", "set", bridge, "up"])
            if network.nat {
                // Masquerading needs forwarding; swiftletd turns it on and leaves it on, as libvirt does.
                try "1\n".write(toFile: "/proc/sys/net/ipv4/ip_forward", atomically: false, encoding: .utf8)
            }
            try HostNetwork.run("nft", ["-f", "-"], input: HostNetwork.firewallScript(table: network.table, bridge: bridge, subnet: network.subnet, nat: network.nat))
        } catch let error as DaemonError {
            throw error
        } catch {
            throw .internal("cannot start network '\(network.definition.name)': \(error)")
        }
        try ensureDnsmasq(network)
    }

    /// Removes everything `bringUp` made; missing pieces are fine (a crash may have left only some).
    func tearDown(_ network: ResolvedNetwork) {
        stopDnsmasq(network.definition.name)
        _ = try? HostNetwork.run("nft", ["delete", "table", "inet", network.table])
        if HostNetwork.isBridge(network.bridge) {
            do { try HostNetwork.run("ip", ["link", "del", network.bridge]) } catch {
                logger.error("cannot remove a bridge", metadata: ["bridge": "\(network.bridge)", "error": "\(error)"])
            }
        }
    }

    // MARK: dnsmasq

    func dnsmasqPidFile(_ name: String) -> String { folder(name) + "/dnsmasq.pid" }

    /// Keeps one dnsmasq for the network: the recorded one when it still
    /// runs with this network's configuration (a daemon restart), else a new one.
    func ensureDnsmasq(_ network: ResolvedNetwork) throws(DaemonError) {
        let name = network.definition.name
        let folder = folder(name)
        let configuration = folder + "/dnsmasq.conf"
        if let pid = recordedDnsmasq(name), dnsmasqs.withLock({ $0[name]?.pid }) != pid {
            dnsmasqs.withLock { $0[name] = Dnsmasq(pid: pid) }
            watch(name, pid: pid, child: false)
            logger.info("dnsmasq re-adopted", metadata: ["network": "\(name)", "pid": "\(pid)"])
            return
        }
        if dnsmasqs.withLock({ $0[name] }).map({ HostProcess.isAlive($0.pid) }) == true { return }
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try HostNetwork.dnsmasqConfiguration(network, directory: folder).write(toFile: configuration, atomically: true, encoding: .utf8)
        } catch {
            throw .internal("cannot write \(configuration): \(error)")
        }
        try spawnDnsmasq(name, configuration: configuration)
    }

    func spawnDnsmasq(_ name: String, configuration: String) throws(DaemonError) {
        guard let binary = HostNetwork.locate("dnsmasq") else {
            throw .unavailable("cannot start network '\(name)': dnsmasq is not installed (Debian: apt install dnsmasq-base)")
        }
        let folder = folder(name)
        let pid: pid_t
        do {
            pid = try HostProcess.spawn(binary: binary, arguments: ["--keep-in-foreground", "--conf-file=" + configuration,
                                                                    "--pid-file=" + dnsmasqPidFile(name), "--log-facility=-", "--user=root"],
                                        stdinPath: "/dev/null", stdoutPath: folder + "/dnsmasq.log", stderrPath: folder + "/dnsmasq.log")
        } catch {
            throw .internal("cannot start dnsmasq for network '\(name)': \(error)")
        }
        // dnsmasq fails fast on a bad configuration or a busy port: give it a moment to.
        for _ in 0..<50 {
            usleep(10_000)
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let log = Supervisor.lastLines(of: folder + "/dnsmasq.log", count: 3)
                throw .internal("dnsmasq for network '\(name)' exited at once: \(log.isEmpty ? "status \(status)" : log)")
            }
            if access(dnsmasqPidFile(name), F_OK) == 0 { break }
        }
        dnsmasqs.withLock { table in
            var entry = table[name] ?? Dnsmasq(pid: pid)
            entry.pid = pid
            table[name] = entry
        }
        watch(name, pid: pid, child: true)
        logger.info("dnsmasq started", metadata: ["network": "\(name)", "pid": "\(pid)"])
    }

    /// The pid file's dnsmasq, when it still runs with this network's configuration.
    func recordedDnsmasq(_ name: String) -> pid_t? {
        guard let text = try? String(contentsOfFile: dnsmasqPidFile(name), encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0, HostProcess.isAlive(pid),
              let commandLine = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { return nil }
        let arguments = commandLine.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return arguments.contains("--conf-file=" + folder(name) + "/dnsmasq.conf") ? pid : nil
    }

    /// Waits for dnsmasq to end (waitpid for a child, /proc for a re-adopted
    /// one) and starts it again while its network is active, at most 5 times a minute.
    func watch(_ name: String, pid: pid_t, child: Bool) {
        let thread = Thread { [self] in
            if child {
                _ = HostProcess.waitForExit(pid)
            } else {
                while HostProcess.isAlive(pid), dnsmasqs.withLock({ $0[name]?.pid }) == pid { usleep(200_000) }
            }
            let now = Date().timeIntervalSince1970
            let restart = dnsmasqs.withLock { table -> Bool in
                guard var entry = table[name], entry.pid == pid else { return false }
                entry.restarts = entry.restarts.filter { now - $0 < 60 } + [now]
                table[name] = entry
                return entry.restarts.count <= 5
            }
            guard restart else { return }
            operations.withLock { _ in
                guard let row = try? store.network(name), row.active, dnsmasqs.withLock({ $0[name]?.pid }) == pid else { return }
                logger.warning("dnsmasq ended; starting it again", metadata: ["network": "\(name)", "pid": "\(pid)"])
                do { try spawnDnsmasq(name, configuration: folder(name) + "/dnsmasq.conf") } catch {
                    logger.error("dnsmasq restart failed", metadata: ["network": "\(name)", "error": "\(error)"])
                }
            }
        }
        thread.stackSize = 64 * 1024
        thread.start()
    }

    func stopDnsmasq(_ name: String) {
        let pid = dnsmasqs.withLock { $0.removeValue(forKey: name)?.pid } ?? recordedDnsmasq(name)
        if let pid {
            kill(pid, SIGTERM)
            for _ in 0..<200 where HostProcess.isAlive(pid) { usleep(10_000) }
            if HostProcess.isAlive(pid) { kill(pid, SIGKILL) }
        }
        unlink(dnsmasqPidFile(name))
    }

    // MARK: taps of VMs

    /// Creates a persistent tap per network NIC of `definition` on its
    /// network's bridge and records them in `tapsFile`; returns the
    /// definition with each such NIC's `tap` set. All or nothing.
    /// `multiQueue`: QEMU opens a single-queue tap without IFF_MULTI_QUEUE,
    /// which a multi-queue tap refuses, so its taps are single-queue, except
    /// for a NIC with `queues` > 1, which QEMU opens with IFF_MULTI_QUEUE once
    /// per pair and which therefore needs a multi-queue tap.
    func attach(_ definition: VMDefinition, tapsFile: String, multiQueue: Bool = true) throws(DaemonError) -> VMDefinition {
        guard definition.nics.contains(where: { $0.network != nil }) else { return definition }
        return try operations.withLock { _ throws(DaemonError) in
            var resolved = definition
            var created: [(network: String, tap: String)] = []
            do {
                for index in resolved.nics.indices {
                    guard let name = resolved.nics[index].network else { continue }
                    let found: DefinitionStore.NetworkRow?
                    do { found = try store.network(name) } catch { throw DaemonError.internal("reading the database: \(error)") }
                    guard let row = found else {
                        throw DaemonError.badRequest("cannot start '\(definition.name)': nics[\(index)] names network '\(name)', which is not defined; `swiftlet net-list --all` lists networks")
                    }
                    guard row.active else {
                        throw DaemonError.conflict("cannot start '\(definition.name)': its network '\(name)' is not active; `swiftlet net-start \(name)` starts it")
                    }
                    let tap = try createTap(bridge: row.definition.bridge ?? "", multiQueue: Self.needsMultiQueueTap(resolved.nics[index], driverDefault: multiQueue),
                                            mtu: resolved.nics[index].mtu)
                    created.append((name, tap))
                    resolved.nics[index].tap = tap
                }
                let text = created.map { "\($0.network) \($0.tap)\n" }.joined()
                do { try text.write(toFile: tapsFile, atomically: true, encoding: .utf8) } catch {
                    throw DaemonError.internal("cannot record taps in \(tapsFile): \(error)")
                }
            } catch {
                created.forEach { removeTap($0.tap) }
                throw error as? DaemonError ?? .internal("\(error)")
            }
            taps.withLock { $0[definition.name] = created }
            return resolved
        }
    }

    /// The lowest free `swltapN`, persistent, multi-queue, owned by the VMM's user, up on `bridge`.
    /// `mtu`: the NIC's, given to the tap too (as libvirt does), so that the
    /// bridge forwards the guest's larger frames to it.
    func createTap(bridge: String, multiQueue: Bool = true, mtu: Int? = nil) throws(DaemonError) -> String {
        guard let name = (0..<4096).lazy.map({ "swltap\($0)" }).first(where: { !HostNetwork.interfaceExists($0) }) else {
            throw .unavailable("no free tap name (swltap0 to swltap4095 all exist)")
        }
        do {
            try HostNetwork.run("ip", Self.tapAddArguments(name: name, multiQueue: multiQueue, owner: tapOwner))
            if let mtu { try HostNetwork.run("ip", ["link", "set", "dev", name, "mtu", String(mtu)]) }
            try HostNetwork.run("ip", ["link", "set", "dev", name, "master", bridge])
            try HostNetwork.run("ip", ["link", "set", "dev", name, "up"])
        } catch {
            removeTap(name)
            throw .internal("cannot create a tap on bridge \(bridge): \(error)")
        }
        return name
    }

    /// Whether a network NIC's tap is made multi-queue: always when the driver
    /// wants it (swiftlet-vmm attaches either way), and for `queues` > 1,
    /// which every VMM opens with IFF_MULTI_QUEUE once per pair.
    static func needsMultiQueueTap(_ nic: VMDefinition.NIC, driverDefault: Bool) -> Bool {
        driverDefault || nic.queuePairs > 1
    }

    /// Refuses, before a VMM is spawned, a tap the user named for a NIC with
    /// `queues` > 1 that exists single-queue: the VMM would open it with
    /// IFF_MULTI_QUEUE and fail. A tap that does not exist yet is made by the VMM.
    /// `tapFlags` reads a tap's flags (nil: no such tap).
    static func checkUserTaps(_ definition: VMDefinition, tapFlags: (String) -> Int? = HostNetwork.tapFlags) throws(DaemonError) {
        for (index, nic) in definition.nics.enumerated() where nic.network == nil && nic.queuePairs > 1 {
            guard let tap = nic.tap, let flags = tapFlags(tap) else { continue }
            if flags & HostNetwork.multiQueueTapFlag == 0 {
                throw .badRequest("cannot start '\(definition.name)': nics[\(index)] has queues \(nic.queuePairs) but tap '\(tap)' is single-queue; recreate it multi-queue (ip tuntap add dev \(tap) mode tap multi_queue), or set queues to 1")
            }
        }
    }

    /// `ip` arguments creating the persistent tap `name` with vnet headers;
    /// multi-queue so that a VMM may attach a queue pair per vCPU.
    static func tapAddArguments(name: String, multiQueue: Bool, owner: (uid: UInt32, gid: UInt32)?) -> [String] {
        var add = ["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"] + (multiQueue ? ["multi_queue"] : [])
        if let owner { add += ["user", String(owner.uid), "group", String(owner.gid)] }
        return add
    }

    func removeTap(_ name: String) {
        guard name.hasPrefix("swltap"), HostNetwork.interfaceExists(name) else { return }
        do { try HostNetwork.run("ip", ["link", "del", name]) } catch {
            logger.error("cannot remove a tap", metadata: ["tap": "\(name)", "error": "\(error)"])
        }
    }

    /// The VM stopped: its taps go.
    func detach(_ vm: String, tapsFile: String) {
        let recorded = taps.withLock { $0.removeValue(forKey: vm) } ?? Self.readTaps(tapsFile)
        recorded.forEach { removeTap($0.tap) }
        unlink(tapsFile)
    }

    public func taps(of vm: String) -> [(network: String, tap: String)] { taps.withLock { $0[vm] ?? [] } }

    static func readTaps(_ path: String) -> [(network: String, tap: String)] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            return fields.count == 2 ? (String(fields[0]), String(fields[1])) : nil
        }
    }

    // MARK: daemon start

    /// Once at daemon start, before VMs autostart: defines `default` on the
    /// first start (`defineDefault`), re-adopts active networks (re-creating
    /// what a crash or reboot removed), cleans up after inactive ones,
    /// re-attaches running VMs' taps and removes stopped VMs' taps, then
    /// starts autostart networks.
    public func adopt(runningVMs: Set<String>, tapsFile: (String) -> String, allVMs: [String], defineDefault: Bool) {
        if defineDefault { defineDefaultNetwork() }
        guard let rows = try? rows() else { return }
        operations.withLock { _ in
            for row in rows {
                guard let network = try? ResolvedNetwork(row.definition) else { continue }
                if row.active {
                    do throws(DaemonError) { try bringUp(network) } catch {
                        logger.error("cannot re-adopt network", metadata: ["network": "\(row.definition.name)", "error": "\(error)"])
                    }
                } else if HostNetwork.isBridge(network.bridge) || recordedDnsmasq(row.definition.name) != nil {
                    logger.info("removing what an inactive network left behind", metadata: ["network": "\(row.definition.name)"])
                    tearDown(network)
                }
            }
        }
        let bridges = Dictionary(rows.map { ($0.definition.name, $0.definition.bridge ?? "") }, uniquingKeysWith: { first, _ in first })
        for vm in allVMs {
            let path = tapsFile(vm)
            let recorded = Self.readTaps(path)
            guard !recorded.isEmpty else { continue }
            if runningVMs.contains(vm) {
                taps.withLock { $0[vm] = recorded }
                for entry in recorded where HostNetwork.interfaceExists(entry.tap) {
                    if let bridge = bridges[entry.network], HostNetwork.isBridge(bridge) {
                        _ = try? HostNetwork.run("ip", ["link", "set", "dev", entry.tap, "master", bridge, "up"])
                    }
                }
            } else {
                recorded.forEach { removeTap($0.tap) }
                unlink(path)
            }
        }
        for row in rows where row.definition.autostart && !row.active {
            do { _ = try start(row.definition.name) } catch {
                logger.error("network autostart failed", metadata: ["network": "\(row.definition.name)", "error": "\(error)"])
            }
        }
    }

    /// `default` (NAT, autostart), defined once per state folder: on
    /// 192.168.122.0/24 as libvirt's, or the first 192.168.N.0/24 that no
    /// host interface or network uses.
    func defineDefaultNetwork() {
        guard (try? store.setting("default-network-defined")) == nil else { return }
        let used = ((try? HostNetwork.hostAddresses()) ?? []).map(\.subnet) + ((try? rows()) ?? []).compactMap { IPv4Subnet($0.definition.subnet) }
        guard let subnet = (122...254).lazy.compactMap({ IPv4Subnet("192.168.\($0).0/24") }).first(where: { candidate in !used.contains { $0.overlaps(candidate) } }) else {
            logger.warning("no free 192.168.N.0/24 for the default network; define one with `swiftlet net-define`")
            return
        }
        do {
            _ = try define(NetworkDefinition(name: "default", mode: "nat", subnet: subnet.description, autostart: true))
        } catch {
            logger.warning("default network not defined", metadata: ["error": "\(error)"])
        }
        try? store.setSetting("default-network-defined", "1")
    }
}
