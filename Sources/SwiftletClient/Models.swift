import Foundation

/// A VM definition as stored by swiftletd and written in `swiftlet define`
/// files (JSON or YAML, snake_case keys). Unknown keys are refused so that a
/// typo (`vcpus`) is an error, not a silently ignored setting.
public struct VMDefinition: Codable, Sendable, Equatable {
    public var name: String
    /// Assigned by the daemon on define when absent.
    public var uuid: String?
    /// Which driver runs the VM: `swiftlet` (swiftlet-vmm, the default) or
    /// `qemu` (qemu-system-x86_64); docs/drivers.md.
    public var hypervisor: String
    public var cpus: Int
    public var memoryMiB: Int
    /// A direct-boot kernel; a QEMU VM may boot firmware from its first disk instead.
    public var kernel: String?
    /// `uefi` (OVMF) or `bios` (SeaBIOS), booting disks[0]: QEMU VMs only, instead of a kernel.
    public var firmware: String?
    /// QEMU-only settings (machine type, CPU model, extra devices).
    public var qemu: QEMUOptions?
    public var initrd: String?
    public var cmdline: String?
    public var disks: [Disk]
    public var nics: [NIC]
    /// `log`: serial console to a log file (and `swiftlet console`); `none`: discarded.
    public var console: String
    /// `restart`: the VM reboots in place; `shutdown`: a guest reboot shuts it off.
    public var onReboot: String
    public var autostart: Bool
    public var limits: Limits?

    /// A virtio-blk disk: an image file (`path`) or a volume of a storage
    /// pool (`volume: POOL/NAME`). Exactly one of the two.
    public struct Disk: Codable, Sendable, Equatable {
        public var path: String?
        public var volume: String?
        /// `raw` or `qcow2`; a path's default is raw (never probed: a guest
        /// could write a qcow2 header into a raw disk); a volume has its own.
        public var format: String?
        public var readonly: Bool
        public var id: String?
        public init(path: String? = nil, volume: String? = nil, format: String? = nil, readonly: Bool = false, id: String? = nil) {
            self.path = path; self.volume = volume; self.format = format; self.readonly = readonly; self.id = id
        }
        enum CodingKeys: String, CodingKey, CaseIterable { case path, volume, format, readonly, id }
        public init(from decoder: any Decoder) throws {
            try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "disk")
            let c = try decoder.container(keyedBy: CodingKeys.self)
            path = try c.decodeIfPresent(String.self, forKey: .path)
            volume = try c.decodeIfPresent(String.self, forKey: .volume)
            format = try c.decodeIfPresent(String.self, forKey: .format)
            readonly = try c.decodeIfPresent(Bool.self, forKey: .readonly) ?? false
            id = try c.decodeIfPresent(String.self, forKey: .id)
        }
    }

    /// A virtio-net interface: on a tap the user made (`tap`) or on a
    /// swiftletd network (`network`), for which the daemon creates a tap at
    /// each start and removes it when the VM stops. Exactly one of the two.
    public struct NIC: Codable, Sendable, Equatable {
        public var tap: String?
        public var network: String?
        /// Generated (52:54:00:xx:xx:xx, unique among definitions) on define when absent.
        public var mac: String?
        public var id: String?
        /// Queue pairs (1-16, libvirt's `<driver queues='N'/>`): more than one
        /// gives the guest multiqueue virtio-net on a multi-queue tap. Absent: 1.
        public var queues: Int?
        /// The MTU offered to the guest (68-65535, libvirt's `<mtu size='N'/>`,
        /// VIRTIO_NET_F_MTU); absent: none offered, the guest uses 1500.
        public var mtu: Int?
        public init(tap: String? = nil, network: String? = nil, mac: String? = nil, id: String? = nil, queues: Int? = nil, mtu: Int? = nil) {
            self.tap = tap; self.network = network; self.mac = mac; self.id = id; self.queues = queues; self.mtu = mtu
        }
        /// `queues`, or the default single pair.
        public var queuePairs: Int { queues ?? 1 }
        public static let queueRange = 1...16
        public static let mtuRange = 68...65535
        enum CodingKeys: String, CodingKey, CaseIterable { case tap, network, mac, id, queues, mtu }
        public init(from decoder: any Decoder) throws {
            try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "nic")
            let c = try decoder.container(keyedBy: CodingKeys.self)
            tap = try c.decodeIfPresent(String.self, forKey: .tap)
            network = try c.decodeIfPresent(String.self, forKey: .network)
            mac = try c.decodeIfPresent(String.self, forKey: .mac)
            id = try c.decodeIfPresent(String.self, forKey: .id)
            // Absent in definitions stored before these fields existed; never null.
            queues = try c.decodeWholeNumberIfPresent(forKey: .queues)
            mtu = try c.decodeWholeNumberIfPresent(forKey: .mtu)
        }
    }

    /// cgroup v2 limits: `cpu_percent` becomes cpu.max (100 = one host CPU),
    /// `memory_mib` becomes memory.max.
    public struct Limits: Codable, Sendable, Equatable {
        public var cpuPercent: Int?
        public var memoryMiB: Int?
        public init(cpuPercent: Int? = nil, memoryMiB: Int? = nil) { self.cpuPercent = cpuPercent; self.memoryMiB = memoryMiB }
        enum CodingKeys: String, CodingKey, CaseIterable { case cpuPercent = "cpu_percent", memoryMiB = "memory_mib" }
        public init(from decoder: any Decoder) throws {
            try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "limits")
            let c = try decoder.container(keyedBy: CodingKeys.self)
            cpuPercent = try c.decodeIfPresent(Int.self, forKey: .cpuPercent)
            memoryMiB = try c.decodeIfPresent(Int.self, forKey: .memoryMiB)
        }
    }

    /// The `qemu:` section of a definition with `hypervisor: qemu`.
    public struct QEMUOptions: Codable, Sendable, Equatable {
        /// `-machine` (default `q35`).
        public var machine: String?
        /// `-cpu` (default: the host CPU as swiftlet-vmm offers it).
        public var cpu: String?
        /// Extra `-device` values, e.g. `virtio-rng-pci` (drivers from an allow-list; no host files).
        public var devices: [String]
        public init(machine: String? = nil, cpu: String? = nil, devices: [String] = []) {
            self.machine = machine; self.cpu = cpu; self.devices = devices
        }
        enum CodingKeys: String, CodingKey, CaseIterable { case machine, cpu, devices }
        public init(from decoder: any Decoder) throws {
            try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "qemu")
            let c = try decoder.container(keyedBy: CodingKeys.self)
            machine = try c.decodeNonNullIfPresent(String.self, forKey: .machine)
            cpu = try c.decodeNonNullIfPresent(String.self, forKey: .cpu)
            devices = try c.decodeNonNullIfPresent([String].self, forKey: .devices) ?? []
        }
    }

    public init(name: String, uuid: String? = nil, hypervisor: String = "swiftlet", cpus: Int = 1, memoryMiB: Int = 128, kernel: String?,
                firmware: String? = nil, qemu: QEMUOptions? = nil,
                initrd: String? = nil, cmdline: String? = nil, disks: [Disk] = [], nics: [NIC] = [],
                console: String = "log", onReboot: String = "restart", autostart: Bool = false, limits: Limits? = nil) {
        self.name = name; self.uuid = uuid; self.hypervisor = hypervisor; self.cpus = cpus; self.memoryMiB = memoryMiB; self.kernel = kernel
        self.firmware = firmware; self.qemu = qemu
        self.initrd = initrd; self.cmdline = cmdline; self.disks = disks; self.nics = nics; self.console = console
        self.onReboot = onReboot; self.autostart = autostart; self.limits = limits
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, uuid, hypervisor, cpus, memoryMiB = "memory_mib", kernel, firmware, qemu, initrd, cmdline, disks, nics, console
        case onReboot = "on_reboot", autostart, limits
    }

    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "definition")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        uuid = try c.decodeIfPresent(String.self, forKey: .uuid)
        // Definitions stored before drivers existed are Swiftlet VMs.
        hypervisor = try c.decodeNonNullIfPresent(String.self, forKey: .hypervisor) ?? "swiftlet"
        cpus = try c.decodeIfPresent(Int.self, forKey: .cpus) ?? 1
        memoryMiB = try c.decodeIfPresent(Int.self, forKey: .memoryMiB) ?? 128
        kernel = try c.decodeIfPresent(String.self, forKey: .kernel)
        firmware = try c.decodeIfPresent(String.self, forKey: .firmware)
        qemu = try c.decodeIfPresent(QEMUOptions.self, forKey: .qemu)
        initrd = try c.decodeIfPresent(String.self, forKey: .initrd)
        cmdline = try c.decodeIfPresent(String.self, forKey: .cmdline)
        disks = try c.decodeIfPresent([Disk].self, forKey: .disks) ?? []
        nics = try c.decodeIfPresent([NIC].self, forKey: .nics) ?? []
        console = try c.decodeIfPresent(String.self, forKey: .console) ?? "log"
        onReboot = try c.decodeIfPresent(String.self, forKey: .onReboot) ?? "restart"
        autostart = try c.decodeIfPresent(Bool.self, forKey: .autostart) ?? false
        limits = try c.decodeIfPresent(Limits.self, forKey: .limits)
    }
}

/// A decoding failure that names the unexpected key and the valid ones.
public struct UnknownKeyError: Error, CustomStringConvertible {
    public let key: String
    public let context: String
    public let known: [String]
    public var description: String {
        "unknown field '\(key)' in \(context); expected one of \(known.joined(separator: ", "))"
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
}

extension KeyedDecodingContainer {
    /// Like decodeIfPresent, but an explicit `null` is a type error (the
    /// documents give these fields a type, never null).
    func decodeNonNullIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        contains(key) ? try decode(type, forKey: key) : nil
    }
}

extension KeyedDecodingContainer {
    /// An integer field that, when present, is a whole number (never null).
    /// Foundation's decoder on Linux fails a fraction such as `2.5` with an
    /// error of its own that becomes "not valid JSON" without a field; this
    /// names the field instead.
    func decodeWholeNumberIfPresent(forKey key: Key) throws -> Int? {
        guard contains(key) else { return nil }
        do { return try decode(Int.self, forKey: key) } catch let error as DecodingError {
            throw error
        } catch {
            throw DecodingError.typeMismatch(Int.self, .init(codingPath: codingPath + [key], debugDescription: "expected a whole number"))
        }
    }
}

func rejectUnknownKeys(_ decoder: any Decoder, known: [String], in context: String) throws {
    let container = try decoder.container(keyedBy: AnyKey.self)
    for key in container.allKeys where !known.contains(key.stringValue) {
        throw UnknownKeyError(key: key.stringValue, context: context, known: known)
    }
}

/// The run states a VM can be in, as swiftletd reports them.
public enum VMState: String, Codable, Sendable, CaseIterable {
    case shutOff = "shut_off"
    case starting
    case running
    case paused
    case shuttingDown = "shutting_down"
    case crashed
}

/// A VM as `GET /v1/vms/{name}` returns it: its definition and run state.
public struct VMInfo: Codable, Sendable, Equatable {
    public var definition: VMDefinition
    public var state: VMState
    /// Why the VM is in this state (exit reason of the last run, or a warning).
    public var reason: String?
    public var pid: Int32?
    /// Unix time the current or last run started.
    public var startedAt: Double?
    /// Whether the VMM serves the per-VM control API (pause, graceful shutdown).
    public var controlAPI: Bool
    public var consoleLog: String
    public var consoleInput: String?
    public var cgroup: String?

    public init(definition: VMDefinition, state: VMState, reason: String? = nil, pid: Int32? = nil, startedAt: Double? = nil,
                controlAPI: Bool = false, consoleLog: String, consoleInput: String? = nil, cgroup: String? = nil) {
        self.definition = definition; self.state = state; self.reason = reason; self.pid = pid; self.startedAt = startedAt
        self.controlAPI = controlAPI; self.consoleLog = consoleLog; self.consoleInput = consoleInput; self.cgroup = cgroup
    }

    enum CodingKeys: String, CodingKey {
        case definition, state, reason, pid, startedAt = "started_at", controlAPI = "control_api"
        case consoleLog = "console_log", consoleInput = "console_input", cgroup
    }
}

/// `GET /v1/vms/{name}/stats`: the VMM process as the host sees it, plus the
/// VMM's own counters when it serves the control API.
public struct VMStats: Codable, Sendable {
    public var name: String
    public var state: VMState
    public var pid: Int32?
    public var uptimeSeconds: Double?
    public var cpuSeconds: Double?
    public var rssBytes: Int?
    public var threads: Int?
    public var vmmMetrics: [String: Double]?

    public init(name: String, state: VMState, pid: Int32? = nil, uptimeSeconds: Double? = nil, cpuSeconds: Double? = nil,
                rssBytes: Int? = nil, threads: Int? = nil, vmmMetrics: [String: Double]? = nil) {
        self.name = name; self.state = state; self.pid = pid; self.uptimeSeconds = uptimeSeconds; self.cpuSeconds = cpuSeconds
        self.rssBytes = rssBytes; self.threads = threads; self.vmmMetrics = vmmMetrics
    }

    enum CodingKeys: String, CodingKey {
        case name, state, pid, uptimeSeconds = "uptime_seconds", cpuSeconds = "cpu_seconds", rssBytes = "rss_bytes"
        case threads, vmmMetrics = "vmm_metrics"
    }
}

/// One line of `GET /v1/events`: a VM changed state.
public struct VMEvent: Codable, Sendable, Equatable {
    public var name: String
    public var state: VMState
    public var reason: String?
    public var time: Double
    public init(name: String, state: VMState, reason: String?, time: Double) {
        self.name = name; self.state = state; self.reason = reason; self.time = time
    }
}

/// The body of every error response: `{"error": "..."}`.
public struct APIErrorBody: Codable, Sendable {
    public var error: String
    public init(error: String) { self.error = error }
}

/// `GET /v1/version`.
public struct DaemonInfo: Codable, Sendable {
    public var name: String
    public var version: String
    public var vmmBinary: String
    public var controlAPI: Bool
    public var cgroups: String
    /// The hypervisor drivers this daemon has, found or not.
    public var drivers: [DriverInfo]
    public init(name: String, version: String, vmmBinary: String, controlAPI: Bool, cgroups: String, drivers: [DriverInfo] = []) {
        self.name = name; self.version = version; self.vmmBinary = vmmBinary; self.controlAPI = controlAPI; self.cgroups = cgroups
        self.drivers = drivers
    }
    enum CodingKeys: String, CodingKey { case name, version, vmmBinary = "vmm_binary", controlAPI = "control_api", cgroups, drivers }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        version = try c.decode(String.self, forKey: .version)
        vmmBinary = try c.decode(String.self, forKey: .vmmBinary)
        controlAPI = try c.decode(Bool.self, forKey: .controlAPI)
        cgroups = try c.decode(String.self, forKey: .cgroups)
        // An older daemon does not list drivers.
        drivers = try c.decodeIfPresent([DriverInfo].self, forKey: .drivers) ?? []
    }
}

/// One hypervisor driver in `GET /v1/version`.
public struct DriverInfo: Codable, Sendable, Equatable {
    /// `swiftlet` or `qemu`: a definition's `hypervisor`.
    public var name: String
    public var binary: String
    /// The binary's version, when it is there and answers.
    public var version: String?
    public var available: Bool
    /// Why the driver cannot start VMs (its binary is missing).
    public var reason: String?
    public init(name: String, binary: String, version: String?, available: Bool, reason: String?) {
        self.name = name; self.binary = binary; self.version = version; self.available = available; self.reason = reason
    }
}

public enum SwiftletJSON {
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
    public static let decoder = JSONDecoder()

    /// A decoding error as one line a person can act on.
    public static func describe(_ error: any Error) -> String {
        switch error {
        case let error as UnknownKeyError: return error.description
        case DecodingError.keyNotFound(let key, let context):
            return "missing field '\(path(context.codingPath + [key]))'"
        case DecodingError.typeMismatch(let type, let context):
            return "field '\(path(context.codingPath))' has the wrong type (expected \(type))"
        case DecodingError.valueNotFound(let type, let context):
            return "field '\(path(context.codingPath))' is null (expected \(type))"
        case DecodingError.dataCorrupted(let context):
            if let underlying = context.underlyingError as? UnknownKeyError { return underlying.description }
            if context.codingPath.isEmpty { return "malformed JSON: \(context.debugDescription)" }
            return "field '\(path(context.codingPath))': \(context.debugDescription)"
        default: return "\(error)"
        }
    }

    static func path(_ keys: [any CodingKey]) -> String {
        keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
}

/// A saved VM (`GET /v1/snapshots`): the VMM's state and memory files in
/// the daemon's state folder, and the VM's definition when it was taken.
public struct SnapshotInfo: Codable, Sendable, Equatable {
    /// The VM it was taken of.
    public var vm: String
    public var name: String
    /// Unix time it was taken.
    public var createdAt: Double
    public var stateBytes: Int
    public var memoryBytes: Int
    /// The size of each of the definition's disks when it was taken (a restore refuses a disk whose size changed).
    public var diskBytes: [Int]
    /// What the VMM's `GET /version` reported, if it answered.
    public var vmmVersion: String?
    public var definition: VMDefinition
    /// The folder holding `state` and `memory`.
    public var path: String

    public init(vm: String, name: String, createdAt: Double, stateBytes: Int, memoryBytes: Int, diskBytes: [Int],
                vmmVersion: String?, definition: VMDefinition, path: String) {
        self.vm = vm; self.name = name; self.createdAt = createdAt; self.stateBytes = stateBytes; self.memoryBytes = memoryBytes
        self.diskBytes = diskBytes; self.vmmVersion = vmmVersion; self.definition = definition; self.path = path
    }

    enum CodingKeys: String, CodingKey {
        case vm, name, createdAt = "created_at", stateBytes = "state_bytes", memoryBytes = "memory_bytes"
        case diskBytes = "disk_bytes", vmmVersion = "vmm_version", definition, path
    }
}

/// `POST /v1/vms/{name}/snapshots`.
public struct SnapshotRequest: Codable, Sendable, Equatable {
    /// What the VM does once saved: `continue` (back to running, or paused
    /// if it was paused: the default), `pause` (stay paused), `stop` (destroyed).
    public enum After: String, Codable, Sendable, CaseIterable { case `continue`, pause, stop }
    public var name: String
    public var after: After?
    public init(name: String, after: After? = nil) { self.name = name; self.after = after }
    enum CodingKeys: String, CodingKey, CaseIterable { case name, after }
    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "snapshot request")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        after = try c.decodeIfPresent(After.self, forKey: .after)
    }
}

/// `POST /v1/snapshots/{vm}/{snapshot}/restore`: into the VM itself, or,
/// with `as`, into a new VM (a clone) of that name.
public struct RestoreRequest: Codable, Sendable, Equatable {
    public var `as`: String?
    /// With `as`: the clone's taps, one per NIC in order, instead of the
    /// original's (which a running original holds open).
    public var taps: [String]?
    public init(as name: String? = nil, taps: [String]? = nil) { self.as = name; self.taps = taps }
    enum CodingKeys: String, CodingKey, CaseIterable { case `as`, taps }
    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "restore request")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        `as` = try c.decodeIfPresent(String.self, forKey: .as)
        taps = try c.decodeIfPresent([String].self, forKey: .taps)
    }
}

/// A virtual network swiftletd runs (docs/networks.md): a Linux bridge with
/// the gateway address, dnsmasq for DHCP and DNS, and, in `nat` mode,
/// masquerading out through the host's routes (nftables).
public struct NetworkDefinition: Codable, Sendable, Equatable {
    public var name: String
    public var uuid: String?
    /// `nat`: guests reach beyond the host, masqueraded; `isolated`: guests
    /// reach each other and the host's gateway address only.
    public var mode: String
    /// The bridge's name (at most 15 characters); `swlbrN` when absent.
    public var bridge: String?
    /// IPv4 subnet in CIDR form, e.g. 192.168.122.0/24 (prefix 8 to 30).
    public var subnet: String
    /// The bridge's address in the subnet; the first host address when absent.
    public var gateway: String?
    /// The DHCP pool; the addresses after the gateway to the last host address when absent.
    public var dhcpStart: String?
    public var dhcpEnd: String?
    /// An optional IPv6 /64 (e.g. fd00:1:2:3::/64): the bridge gets ::1, guests router adverts and DHCPv6.
    public var subnet6: String?
    public var autostart: Bool

    public init(name: String, uuid: String? = nil, mode: String = "nat", bridge: String? = nil, subnet: String,
                gateway: String? = nil, dhcpStart: String? = nil, dhcpEnd: String? = nil, subnet6: String? = nil, autostart: Bool = false) {
        self.name = name; self.uuid = uuid; self.mode = mode; self.bridge = bridge; self.subnet = subnet
        self.gateway = gateway; self.dhcpStart = dhcpStart; self.dhcpEnd = dhcpEnd; self.subnet6 = subnet6; self.autostart = autostart
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, uuid, mode, bridge, subnet, gateway, dhcpStart = "dhcp_start", dhcpEnd = "dhcp_end", subnet6, autostart
    }

    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "network definition")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        uuid = try c.decodeNonNullIfPresent(String.self, forKey: .uuid)
        mode = try c.decodeNonNullIfPresent(String.self, forKey: .mode) ?? "nat"
        bridge = try c.decodeNonNullIfPresent(String.self, forKey: .bridge)
        subnet = try c.decode(String.self, forKey: .subnet)
        gateway = try c.decodeNonNullIfPresent(String.self, forKey: .gateway)
        dhcpStart = try c.decodeNonNullIfPresent(String.self, forKey: .dhcpStart)
        dhcpEnd = try c.decodeNonNullIfPresent(String.self, forKey: .dhcpEnd)
        subnet6 = try c.decodeNonNullIfPresent(String.self, forKey: .subnet6)
        autostart = try c.decodeNonNullIfPresent(Bool.self, forKey: .autostart) ?? false
    }
}

/// A DHCP lease dnsmasq handed out on a network.
public struct NetworkLease: Codable, Sendable, Equatable {
    public var mac: String
    public var address: String
    public var hostname: String?
    /// Seconds since 1970 when the lease ends (0: never).
    public var expires: Int
    public init(mac: String, address: String, hostname: String?, expires: Int) {
        self.mac = mac; self.address = address; self.hostname = hostname; self.expires = expires
    }
}

/// A network as `GET /v1/networks/{name}` returns it.
public struct NetworkInfo: Codable, Sendable, Equatable {
    public var definition: NetworkDefinition
    public var active: Bool
    /// The bridge in use (the definition's, or the one assigned).
    public var bridge: String
    /// dnsmasq's pid while the network is active.
    public var dnsmasqPid: Int?
    /// The running VMs with an interface on this network.
    public var vms: [String]
    public var leases: [NetworkLease]
    public init(definition: NetworkDefinition, active: Bool, bridge: String, dnsmasqPid: Int?, vms: [String], leases: [NetworkLease]) {
        self.definition = definition; self.active = active; self.bridge = bridge; self.dnsmasqPid = dnsmasqPid; self.vms = vms; self.leases = leases
    }
    enum CodingKeys: String, CodingKey { case definition, active, bridge, dnsmasqPid = "dnsmasq_pid", vms, leases }
}

/// One of a VM's interfaces and the addresses its guest was given (`swiftlet domifaddr`).
public struct InterfaceAddresses: Codable, Sendable, Equatable {
    public var id: String
    public var mac: String?
    public var network: String?
    /// The host side: the tap (while the VM runs, for network NICs).
    public var tap: String?
    /// CIDR addresses from the network's DHCP leases.
    public var addresses: [String]
    public init(id: String, mac: String?, network: String?, tap: String?, addresses: [String]) {
        self.id = id; self.mac = mac; self.network = network; self.tap = tap; self.addresses = addresses
    }
}

/// A directory storage pool (docs/storage.md): volumes are files in `path`.
public struct PoolDefinition: Codable, Sendable, Equatable {
    public var name: String
    public var uuid: String?
    /// An absolute folder inside one of swiftletd's image folders; `<state>/images/pools/NAME` when absent.
    public var path: String?
    public var autostart: Bool
    public init(name: String, uuid: String? = nil, path: String? = nil, autostart: Bool = false) {
        self.name = name; self.uuid = uuid; self.path = path; self.autostart = autostart
    }
    enum CodingKeys: String, CodingKey, CaseIterable { case name, uuid, path, autostart }
    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "pool definition")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        uuid = try c.decodeNonNullIfPresent(String.self, forKey: .uuid)
        path = try c.decodeNonNullIfPresent(String.self, forKey: .path)
        autostart = try c.decodeNonNullIfPresent(Bool.self, forKey: .autostart) ?? false
    }
}

public struct PoolInfo: Codable, Sendable, Equatable {
    public var definition: PoolDefinition
    public var active: Bool
    public var volumes: Int
    /// The file system's size and free space under the pool's folder.
    public var capacityBytes: Int?
    public var availableBytes: Int?
    public init(definition: PoolDefinition, active: Bool, volumes: Int, capacityBytes: Int?, availableBytes: Int?) {
        self.definition = definition; self.active = active; self.volumes = volumes; self.capacityBytes = capacityBytes; self.availableBytes = availableBytes
    }
    enum CodingKeys: String, CodingKey { case definition, active, volumes, capacityBytes = "capacity_bytes", availableBytes = "available_bytes" }
}

/// `POST /v1/pools/{pool}/volumes`.
public struct VolumeRequest: Codable, Sendable, Equatable {
    public var name: String
    /// The virtual size in bytes.
    public var capacityBytes: Int
    /// `qcow2` (default) or `raw`.
    public var format: String
    /// A qcow2 overlay's backing image: `POOL/NAME` of a volume, or an absolute path in an image folder.
    public var backing: String?
    /// The backing image's format when it is a path (`raw` or `qcow2`); a volume's is known.
    public var backingFormat: String?
    public init(name: String, capacityBytes: Int, format: String = "qcow2", backing: String? = nil, backingFormat: String? = nil) {
        self.name = name; self.capacityBytes = capacityBytes; self.format = format; self.backing = backing; self.backingFormat = backingFormat
    }
    enum CodingKeys: String, CodingKey, CaseIterable { case name, capacityBytes = "capacity_bytes", format, backing, backingFormat = "backing_format" }
    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, known: CodingKeys.allCases.map(\.rawValue), in: "volume request")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        capacityBytes = try c.decode(Int.self, forKey: .capacityBytes)
        format = try c.decodeNonNullIfPresent(String.self, forKey: .format) ?? "qcow2"
        backing = try c.decodeNonNullIfPresent(String.self, forKey: .backing)
        backingFormat = try c.decodeNonNullIfPresent(String.self, forKey: .backingFormat)
    }
}

public struct VolumeInfo: Codable, Sendable, Equatable {
    public var pool: String
    public var name: String
    public var path: String
    public var format: String
    public var capacityBytes: Int
    /// Bytes the file takes on disk now.
    public var allocationBytes: Int
    /// The backing image's path and format (qcow2 overlays).
    public var backing: String?
    public var backingFormat: String?
    public init(pool: String, name: String, path: String, format: String, capacityBytes: Int, allocationBytes: Int, backing: String?, backingFormat: String?) {
        self.pool = pool; self.name = name; self.path = path; self.format = format; self.capacityBytes = capacityBytes
        self.allocationBytes = allocationBytes; self.backing = backing; self.backingFormat = backingFormat
    }
    enum CodingKeys: String, CodingKey {
        case pool, name, path, format, capacityBytes = "capacity_bytes", allocationBytes = "allocation_bytes", backing, backingFormat = "backing_format"
    }
}
