import Glibc
import HostSystem
import LeanJSON
import RateLimiter
import VMM
import VirtioBlock

/// Firecracker's `BootSource`.
public struct BootSource: Equatable, Sendable {
    public var kernelImagePath: String
    public var initrdPath: String?
    public var bootArgs: String?

    public init(kernelImagePath: String, initrdPath: String? = nil, bootArgs: String? = nil) {
        self.kernelImagePath = kernelImagePath
        self.initrdPath = initrdPath
        self.bootArgs = bootArgs
    }

    static let fields = ["kernel_image_path", "initrd_path", "boot_args"]

    init(json fields: JSONFields) throws(APIError) {
        try fields.allowOnly(Self.fields)
        kernelImagePath = try fields.requiredString("kernel_image_path")
        guard !kernelImagePath.isEmpty else { throw .badRequest("boot-source: 'kernel_image_path' is empty") }
        initrdPath = try fields.string("initrd_path")
        bootArgs = try fields.string("boot_args")
    }

    /// Firecracker opens the kernel and initrd when they are PUT, so a bad
    /// path is that request's error (in its words), not InstanceStart's.
    /// Both must be regular files within their caps (a FIFO would hang the
    /// API thread, a huge file exhaust memory); opened O_NONBLOCK to find out.
    func checkFiles() throws(APIError) {
        do {
            _ = try OwnedFileDescriptor.openRegularFile(kernelImagePath, maximumSize: VMConfiguration.maximumKernelSize)
        } catch {
            switch error {
            case let .open(cause), let .read(cause):
                throw .badRequest("Boot source error: The kernel file cannot be opened: \(APIError.osError(cause.errno))")
            case .notARegularFile, .tooLarge:
                throw .badRequest("Boot source error: \(VMMError(reading: "kernel_image_path", path: kernelImagePath, error))")
            }
        }
        guard let initrdPath else { return }
        do {
            _ = try OwnedFileDescriptor.openRegularFile(initrdPath, maximumSize: VMConfiguration.maximumInitrdSize)
        } catch {
            switch error {
            case let .open(cause), let .read(cause):
                throw .badRequest("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. \(APIError.osError(cause.errno))")
            case .notARegularFile, .tooLarge:
                throw .badRequest("Boot source error: \(VMMError(reading: "initrd_path", path: initrdPath, error))")
            }
        }
    }

    /// Why `path` cannot be opened, or nil if it can. O_NONBLOCK: opening a
    /// FIFO must not wait for a writer on the API thread.
    static func openError(_ path: String, flags: Int32 = O_RDONLY) -> Errno? {
        do {
            _ = try OwnedFileDescriptor.open(path, flags: flags | O_NONBLOCK)
            return nil
        } catch {
            return error.errno
        }
    }

    /// As in Firecracker's `GET /vm/config`: absent members are null.
    var json: String {
        JSONText.object([
            ("kernel_image_path", JSONText.string(kernelImagePath)),
            ("initrd_path", initrdPath.map(JSONText.string) ?? "null"),
            ("boot_args", bootArgs.map(JSONText.string) ?? "null"),
        ])
    }

    /// Firecracker's boot source before any PUT: an empty kernel path and nulls.
    static let unsetJSON = #"{"kernel_image_path":"","initrd_path":null,"boot_args":null}"#
}

/// Firecracker's `MachineConfiguration`. `smt`, `track_dirty_pages`,
/// `cpu_template` (the x86 static templates) and `huge_pages` ("None",
/// "Transparent") are accepted, validated as Firecracker does and reported
/// back; of them Swiftlet applies `huge_pages: "Transparent"` (MADV_HUGEPAGE)
/// only (docs/firecracker-compatibility.md).
public struct MachineConfiguration: Equatable, Sendable {
    public var vcpuCount: Int
    public var memorySizeMiB: UInt64
    public var smt = false
    public var trackDirtyPages = false
    /// A static CPU template name, or nil for "None".
    public var cpuTemplate: String?
    public var hugePages = "None"

    public init(vcpuCount: Int = 1, memorySizeMiB: UInt64 = VMConfiguration.defaultMemorySize >> 20) {
        self.vcpuCount = vcpuCount
        self.memorySizeMiB = memorySizeMiB
    }

    static let fields = ["vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "cpu_template", "huge_pages"]
    static let vcpuRange: ClosedRange<UInt64> = 1...254
    static let memoryRange: ClosedRange<UInt64> = (VMConfiguration.minimumMemorySize >> 20)...(VMConfiguration.maximumMemorySize >> 20)
    /// Firecracker's static CPU templates for x86_64 (V1N1 is for Arm).
    static let cpuTemplates = ["C3", "T2", "T2S", "T2CL", "T2A"]
    static let hugePageModes = ["None", "Transparent"]

    /// PUT replaces (both counts required; the rest back to their defaults,
    /// as in Firecracker); PATCH (`updating`) changes what is given.
    init(json fields: JSONFields, updating base: MachineConfiguration?) throws(APIError) {
        try fields.allowOnly(Self.fields)
        if let base {
            self = base
            vcpuCount = try fields.integer("vcpu_count", in: Self.vcpuRange).map { Int($0) } ?? base.vcpuCount
            memorySizeMiB = try fields.integer("mem_size_mib", in: Self.memoryRange) ?? base.memorySizeMiB
        } else {
            vcpuCount = Int(try fields.requiredInteger("vcpu_count", in: Self.vcpuRange))
            memorySizeMiB = try fields.requiredInteger("mem_size_mib", in: Self.memoryRange)
        }
        if let smt = try fields.bool("smt") { self.smt = smt }
        if let track = try fields.bool("track_dirty_pages") { trackDirtyPages = track }
        if let template = try fields.string("cpu_template") {
            if template == "None" {
                cpuTemplate = nil
            } else if Self.cpuTemplates.contains(template) {
                cpuTemplate = template
            } else {
                throw .deserialization("unknown variant `\(template.prefix(40))`, expected one of `None`, \(Self.cpuTemplates.map { "`\($0)`" }.joined(separator: ", ")) (V1N1 is for aarch64)")
            }
        }
        if let pages = try fields.string("huge_pages") {
            guard Self.hugePageModes.contains(pages) else {
                if pages == "2M" {
                    throw .badRequest("Machine config error: huge_pages \"2M\" (hugetlbfs) is not supported by Swiftlet; use \"None\" or \"Transparent\"")
                }
                throw .deserialization("unknown variant `\(pages.prefix(40))`, expected one of `None`, `Transparent`, `2M`")
            }
            hugePages = pages
        }
        if smt && vcpuCount > 1 && vcpuCount % 2 != 0 {
            throw .badRequest("Machine config error: The number of vCPUs must be greater than 0, less than \(Self.vcpuRange.upperBound + 1) and must be 1 or an even number if SMT is enabled.")
        }
    }

    var json: String {
        var members = [("vcpu_count", "\(vcpuCount)"), ("mem_size_mib", "\(memorySizeMiB)"), ("smt", JSONText.bool(smt))]
        if let cpuTemplate { members.append(("cpu_template", JSONText.string(cpuTemplate))) }
        members += [("track_dirty_pages", JSONText.bool(trackDirtyPages)), ("huge_pages", JSONText.string(hugePages))]
        return JSONText.object(members)
    }
}

/// Firecracker's `Drive` (virtio-block).
public struct DriveConfiguration: Equatable, Sendable {
    public var driveID: String
    public var pathOnHost: String
    public var isRootDevice: Bool
    public var isReadOnly: Bool
    public var partUUID: String?
    /// "Unsafe" (Firecracker's default: flushes are ignored) or "Writeback".
    public var cacheType = "Unsafe"
    /// "Sync" or "Async"; Swiftlet's block I/O is the same for both (a worker thread).
    public var ioEngine = "Sync"
    public var rateLimiter: RateLimiterConfiguration

    public init(driveID: String, pathOnHost: String, isRootDevice: Bool = false, isReadOnly: Bool = false, partUUID: String? = nil,
                cacheType: String = "Unsafe", rateLimiter: RateLimiterConfiguration = .unlimited) {
        self.driveID = driveID
        self.pathOnHost = pathOnHost
        self.isRootDevice = isRootDevice
        self.isReadOnly = isReadOnly
        self.partUUID = partUUID
        self.cacheType = cacheType
        self.rateLimiter = rateLimiter
    }

    static let fields = ["drive_id", "path_on_host", "is_root_device", "is_read_only", "partuuid", "cache_type", "io_engine", "rate_limiter"]

    /// PUT: a whole drive. `pathID` is the id in the URL, which the body must repeat.
    init(json fields: JSONFields, pathID: String) throws(APIError) {
        try fields.allowOnly(Self.fields)
        driveID = try fields.requiredString("drive_id")
        guard driveID == pathID else {
            throw .badRequest("drive: 'drive_id' '\(driveID)' differs from the id '\(pathID)' in the path")
        }
        pathOnHost = try fields.requiredString("path_on_host")
        guard !pathOnHost.isEmpty else { throw .badRequest("drive '\(pathID)': 'path_on_host' is empty") }
        isRootDevice = try fields.requiredBool("is_root_device")
        isReadOnly = try fields.bool("is_read_only") ?? false
        partUUID = try fields.string("partuuid")
        if let cache = try fields.string("cache_type"), cache != "Unsafe", cache != "Writeback" {
            throw .deserialization("unknown variant `\(cache.prefix(40))`, expected `Unsafe` or `Writeback`")
        }
        if let engine = try fields.string("io_engine"), engine != "Sync", engine != "Async" {
            throw .deserialization("unknown variant `\(engine.prefix(40))`, expected `Sync` or `Async`")
        }
        cacheType = try fields.string("cache_type") ?? "Unsafe"
        ioEngine = try fields.string("io_engine") ?? "Sync"
        rateLimiter = try RateLimiterJSON.configuration(fields, key: "rate_limiter")
    }

    /// Firecracker opens the backing file when the drive is PUT.
    /// Only regular files and block devices (a FIFO, found with O_NONBLOCK, is refused).
    func checkFile() throws(APIError) {
        if let errno = BootSource.openError(pathOnHost, flags: isReadOnly ? O_RDONLY : O_RDWR) {
            throw .badRequest("Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: \(APIError.osError(errno)) \(pathOnHost)")
        }
        var status = stat()
        if stat(pathOnHost, &status) == 0, status.st_mode & S_IFMT != S_IFREG, status.st_mode & S_IFMT != S_IFBLK {
            throw .badRequest("Drive config error: 'path_on_host' '\(pathOnHost)' is \(fileKindName(mode: status.st_mode)): expected a raw image file or a block device")
        }
        // Another VMM's lock refuses the drive now rather than at InstanceStart (the probe's lock goes with it).
        if let probe = try? OwnedFileDescriptor.open(pathOnHost, flags: (isReadOnly ? O_RDONLY : O_RDWR) | O_NONBLOCK),
           (try? probe.tryLockWholeFile(isReadOnly ? .shared : .exclusive)) == false {
            throw .badRequest("Drive config error: \(VirtioBlockError.locked(path: pathOnHost, readOnly: isReadOnly))")
        }
    }

    /// Firecracker's `PartialDrive`: what PATCH /drives/{id} changes on a running VM.
    struct Patch: Equatable {
        var pathOnHost: String?
        var rateLimiter: RateLimiterUpdate
    }

    static let patchFields = ["drive_id", "path_on_host", "rate_limiter"]

    /// Parses a PATCH body (`PartialDrive`).
    static func patch(json fields: JSONFields, pathID: String) throws(APIError) -> Patch {
        try fields.allowOnly(Self.patchFields)
        let id = try fields.requiredString("drive_id")
        guard id == pathID else { throw .badRequest("drive: 'drive_id' '\(id)' differs from the id '\(pathID)' in the path") }
        let path = try fields.string("path_on_host")
        if let path, path.isEmpty { throw .badRequest("drive '\(pathID)': 'path_on_host' is empty") }
        let limiter = try RateLimiterJSON.update(fields, key: "rate_limiter")
        guard path != nil || fields.has("rate_limiter") else {
            throw .badRequest("drive '\(pathID)': nothing to change: a PATCH needs 'path_on_host' and/or 'rate_limiter'")
        }
        return Patch(pathOnHost: path, rateLimiter: limiter)
    }

    /// Firecracker's drive in `GET /vm/config`, nulls included.
    var json: String {
        JSONText.object([
            ("drive_id", JSONText.string(driveID)), ("partuuid", partUUID.map(JSONText.string) ?? "null"),
            ("is_root_device", JSONText.bool(isRootDevice)), ("cache_type", JSONText.string(cacheType)),
            ("is_read_only", JSONText.bool(isReadOnly)), ("path_on_host", JSONText.string(pathOnHost)),
            ("rate_limiter", RateLimiterJSON.json(rateLimiter)), ("io_engine", JSONText.string(ioEngine)), ("socket", "null"),
        ])
    }
}

/// Firecracker's `NetworkInterface` (virtio-net on a host TAP device).
public struct NetworkInterfaceConfiguration: Equatable, Sendable {
    public var interfaceID: String
    public var hostDeviceName: String
    public var guestMAC: String?
    public var mtu: Int?
    public var receiveRateLimiter: RateLimiterConfiguration
    public var transmitRateLimiter: RateLimiterConfiguration

    public init(interfaceID: String, hostDeviceName: String, guestMAC: String? = nil, mtu: Int? = nil,
                receiveRateLimiter: RateLimiterConfiguration = .unlimited, transmitRateLimiter: RateLimiterConfiguration = .unlimited) {
        self.interfaceID = interfaceID
        self.hostDeviceName = hostDeviceName
        self.guestMAC = guestMAC
        self.mtu = mtu
        self.receiveRateLimiter = receiveRateLimiter
        self.transmitRateLimiter = transmitRateLimiter
    }

    static let fields = ["iface_id", "host_dev_name", "guest_mac", "mtu", "rx_rate_limiter", "tx_rate_limiter"]

    init(json fields: JSONFields, pathID: String) throws(APIError) {
        try fields.allowOnly(Self.fields)
        interfaceID = try fields.requiredString("iface_id")
        guard interfaceID == pathID else {
            throw .badRequest("network interface: 'iface_id' '\(interfaceID)' differs from the id '\(pathID)' in the path")
        }
        hostDeviceName = try fields.requiredString("host_dev_name")
        try Self.checkDeviceName(hostDeviceName)
        guestMAC = try fields.string("guest_mac")
        if let guestMAC { try Self.checkMAC(guestMAC) }
        mtu = try fields.integer("mtu", in: 68...65535).map { Int($0) }
        receiveRateLimiter = try RateLimiterJSON.configuration(fields, key: "rx_rate_limiter")
        transmitRateLimiter = try RateLimiterJSON.configuration(fields, key: "tx_rate_limiter")
    }

    /// Firecracker's `PartialNetworkInterface`: PATCH changes the rate limiters of a running VM.
    struct Patch: Equatable {
        var receive: RateLimiterUpdate
        var transmit: RateLimiterUpdate
    }

    static let patchFields = ["iface_id", "rx_rate_limiter", "tx_rate_limiter"]

    static func patch(json fields: JSONFields, pathID: String) throws(APIError) -> Patch {
        try fields.allowOnly(Self.patchFields)
        let id = try fields.requiredString("iface_id")
        guard id == pathID else { throw .badRequest("network interface: 'iface_id' '\(id)' differs from the id '\(pathID)' in the path") }
        return Patch(receive: try RateLimiterJSON.update(fields, key: "rx_rate_limiter"),
                     transmit: try RateLimiterJSON.update(fields, key: "tx_rate_limiter"))
    }

    /// Linux interface names: 1 to 15 bytes, no '/', whitespace or ':'.
    static func checkDeviceName(_ name: String) throws(APIError) {
        let bytes = Array(name.utf8)
        guard (1...15).contains(bytes.count), bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }) else {
            throw .badRequest("network interface: 'host_dev_name' '\(name)' is not a Linux interface name (1 to 15 characters, no '/', ':' or spaces)")
        }
    }

    /// Six hex octets separated by ':'.
    static func checkMAC(_ mac: String) throws(APIError) {
        let octets = mac.split(separator: ":", omittingEmptySubsequences: false)
        guard octets.count == 6, octets.allSatisfy({ $0.count == 2 && UInt8($0, radix: 16) != nil }) else {
            throw .badRequest("network interface: 'guest_mac' '\(mac)' is not a MAC address such as 06:00:ac:10:00:02")
        }
    }

    /// Firecracker's interface in `GET /vm/config`, nulls included.
    var json: String {
        JSONText.object([
            ("iface_id", JSONText.string(interfaceID)), ("host_dev_name", JSONText.string(hostDeviceName)),
            ("guest_mac", guestMAC.map(JSONText.string) ?? "null"), ("mtu", mtu.map { "\($0)" } ?? "null"),
            ("rx_rate_limiter", RateLimiterJSON.json(receiveRateLimiter)), ("tx_rate_limiter", RateLimiterJSON.json(transmitRateLimiter)),
        ])
    }
}

/// Everything the API configures before InstanceStart (Firecracker's
/// `FullVmConfiguration`), plus the process-level settings from the command
/// line (serial, reboot action, KVM device) that the API does not change.
public struct InstanceConfiguration: Equatable, Sendable {
    public var bootSource: BootSource?
    public var machine = MachineConfiguration()
    public var drives: [DriveConfiguration] = []
    public var networkInterfaces: [NetworkInterfaceConfiguration] = []
    /// The metadata service and its configuration (PUT /mmds/config).
    public var mmds = MMDSSettings()
    /// Serial, on-reboot and KVM device come from here.
    public var base: VMConfiguration
    /// The config file's `logger` and `metrics` sections, applied when the
    /// process starts; like Firecracker, `GET /vm/config` shows them as null.
    var logger: LoggerSettings?
    var metrics: MetricsSettings?

    public init(base: VMConfiguration = VMConfiguration(kernelPath: "")) {
        self.base = base
    }

    /// The configuration of a VM the command line describes (`--kernel`, `--config`).
    public init(_ configuration: VMConfiguration) {
        base = configuration
        bootSource = BootSource(kernelImagePath: configuration.kernelPath, initrdPath: configuration.initrdPath,
                                bootArgs: configuration.commandLine)
        machine = MachineConfiguration(vcpuCount: configuration.cpuCount, memorySizeMiB: configuration.memorySize >> 20)
    }

    /// Ids of drives and interfaces, as Firecracker accepts them: non-empty,
    /// letters and digits (any script) and '_', any length (the request size
    /// bounds it); '-' and '.' are accepted too, as Swiftlet always did.
    static func checkID(_ id: String, what: String) throws(APIError) {
        let valid = id.unicodeScalars.allSatisfy { scalar in
            scalar.properties.isAlphabetic || scalar.properties.numericType != nil || scalar == "_" || scalar == "-" || scalar == "."
        }
        guard !id.isEmpty, valid else {
            throw .badRequest("\(what) id '\(id.prefix(80))' is invalid: API resource ids hold only letters, digits and '_' (and '-', '.')")
        }
    }

    mutating func putDrive(_ drive: DriveConfiguration) throws(APIError) {
        if drive.isRootDevice, let other = drives.first(where: { $0.isRootDevice && $0.driveID != drive.driveID }) {
            throw .badRequest("Drive config error: A root block device already exists! (drive '\(other.driveID)')")
        }
        if let index = drives.firstIndex(where: { $0.driveID == drive.driveID }) {
            drives[index] = drive
        } else {
            // Firecracker keeps the root device first.
            if drive.isRootDevice { drives.insert(drive, at: 0) } else { drives.append(drive) }
        }
    }

    mutating func putNetworkInterface(_ interface: NetworkInterfaceConfiguration) throws(APIError) {
        if let other = networkInterfaces.first(where: { $0.hostDeviceName == interface.hostDeviceName && $0.interfaceID != interface.interfaceID }) {
            throw .badRequest("Network config error: Could not create the network device: host device '\(interface.hostDeviceName)' is already used by '\(other.interfaceID)'")
        }
        if let mac = interface.guestMAC, let other = networkInterfaces.first(where: { $0.guestMAC?.lowercased() == mac.lowercased() && $0.interfaceID != interface.interfaceID }) {
            throw .badRequest("Network config error: The MAC address is already in use: \(mac) (by '\(other.interfaceID)')")
        }
        if let index = networkInterfaces.firstIndex(where: { $0.interfaceID == interface.interfaceID }) {
            networkInterfaces[index] = interface
        } else {
            networkInterfaces.append(interface)
        }
    }

    /// The VMM configuration to build, or why it cannot start yet.
    public func vmConfiguration() throws(APIError) -> VMConfiguration {
        guard let bootSource else {
            throw .conflict("cannot start the VM without a boot source: PUT /boot-source first")
        }
        var result = base
        result.kernelPath = bootSource.kernelImagePath
        result.initrdPath = bootSource.initrdPath
        result.commandLine = bootSource.bootArgs ?? VMConfiguration.defaultCommandLine
        result.cpuCount = machine.vcpuCount
        result.memorySize = machine.memorySizeMiB << 20
        result.transparentHugePages = machine.hugePages == "Transparent"
        result.trackDirtyPages = machine.trackDirtyPages
        try DeviceConfigurationHook.apply(drives: drives, networkInterfaces: networkInterfaces, to: &result)
        result.metadataService = mmds.attachment
        do {
            try result.validate()
        } catch {
            throw .badRequest("\(error)")
        }
        return result
    }

    /// Firecracker's `GET /vm/config` document (`FullVmConfiguration`):
    /// every section, null or empty when not configured, as Firecracker
    /// returns it. Sections Swiftlet does not offer are always null/empty.
    public var json: String {
        // Command-line (--net) interfaces on a named tap, then the API's.
        let commandLine = base.networkInterfaces.compactMap { interface -> String? in
            guard case let .name(tap) = interface.tap else { return nil }
            return JSONText.object([("iface_id", JSONText.string(interface.id)), ("host_dev_name", JSONText.string(tap)),
                                    ("guest_mac", JSONText.string("\(interface.effectiveMAC)")), ("mtu", "null"),
                                    ("rx_rate_limiter", "null"), ("tx_rate_limiter", "null")])
        }
        return JSONText.object([
            ("balloon", "null"),
            ("drives", JSONText.array(drives.map(\.json))),
            ("boot-source", bootSource?.json ?? BootSource.unsetJSON),
            ("cpu-config", "null"),
            ("logger", "null"),
            ("machine-config", machine.json),
            ("metrics", "null"),
            ("mmds-config", mmds.json),
            ("network-interfaces", JSONText.array(commandLine + networkInterfaces.map(\.json))),
            ("vsock", base.vsock.map { JSONText.object([("guest_cid", "\($0.guestCID)"), ("uds_path", JSONText.string($0.udsPath))]) } ?? "null"),
            ("entropy", base.entropyDevice ? JSONText.object([("rate_limiter", RateLimiterJSON.json(base.entropyRateLimiter))]) : "null"),
            ("pmem", "[]"),
            ("memory-hotplug", "null"),
        ])
    }

    static let fileSections = ["boot-source", "machine-config", "drives", "network-interfaces", "entropy", "logger", "metrics",
                               "balloon", "cpu-config", "mmds-config", "vsock", "pmem", "memory-hotplug"]
    /// Sections of Firecracker's file Swiftlet has no device or feature for: refused unless null or empty.
    static let unsupportedFileSections = ["balloon", "cpu-config", "pmem", "memory-hotplug"]

    /// Reads a Firecracker `--config-file` (the `FullVmConfiguration` layout).
    public static func parseFirecrackerFile(_ bytes: [UInt8], base: VMConfiguration) throws(APIError) -> InstanceConfiguration {
        let fields = try JSONFields(body: bytes, context: "config file")
        try fields.allowOnly(fileSections)
        for section in unsupportedFileSections {
            guard let value = fields.value(section) else { continue }
            if case let .array(elements) = value, elements.isEmpty { continue }
            throw .badRequest("config file: section '\(section)' is not supported by Swiftlet (see docs/firecracker-compatibility.md)")
        }
        var result = InstanceConfiguration(base: base)
        if let logger = fields.value("logger") { result.logger = try LoggerSettings(json: JSONFields(logger, context: "logger")) }
        if let metrics = fields.value("metrics") { result.metrics = try MetricsSettings(json: JSONFields(metrics, context: "metrics")) }
        guard let boot = fields.value("boot-source") else { throw fields.missing("boot-source") }
        result.bootSource = try BootSource(json: JSONFields(boot, context: "boot-source"))
        if let entropy = fields.value("entropy") {
            let device = try JSONFields(entropy, context: "entropy")
            try device.allowOnly(["rate_limiter"])
            result.base.entropyRateLimiter = try RateLimiterJSON.configuration(device, key: "rate_limiter")
            result.base.entropyDevice = true
        }
        if let vsock = fields.value("vsock") {
            result.base.vsock = try InstanceController.vsockConfiguration(JSONFields(vsock, context: "vsock")).0
        }
        if let machine = fields.value("machine-config") {
            result.machine = try MachineConfiguration(json: JSONFields(machine, context: "machine-config"), updating: MachineConfiguration())
        }
        for (key, add) in [("drives", true), ("network-interfaces", false)] {
            guard let list = fields.value(key) else { continue }
            guard case let .array(elements) = list else { throw fields.mismatch(key, list, "an array") }
            for element in elements {
                if add {
                    let item = try JSONFields(element, context: "drive")
                    let id = try item.requiredString("drive_id")
                    try checkID(id, what: "drive")
                    guard !result.drives.contains(where: { $0.driveID == id }) else { throw .badRequest("drives: duplicate drive_id '\(id)'") }
                    try result.putDrive(DriveConfiguration(json: item, pathID: id))
                } else {
                    let item = try JSONFields(element, context: "network interface")
                    let id = try item.requiredString("iface_id")
                    try checkID(id, what: "network interface")
                    guard !result.networkInterfaces.contains(where: { $0.interfaceID == id }) else { throw .badRequest("network-interfaces: duplicate iface_id '\(id)'") }
                    try result.putNetworkInterface(NetworkInterfaceConfiguration(json: item, pathID: id))
                }
            }
        }
        if let section = fields.value("mmds-config") { try result.applyMMDSSection(section) }
        return result
    }
}

/// Drives map onto `VMConfiguration.disks` (virtio-blk), network interfaces
/// onto `VMConfiguration.networkInterfaces` (virtio-net on the named tap).
enum DeviceConfigurationHook {
    static func apply(drives: [DriveConfiguration], networkInterfaces: [NetworkInterfaceConfiguration],
                      to configuration: inout VMConfiguration) throws(APIError) {
        // Drives become virtio-blk disks in order (the root drive is first:
        // vda). The drive id names the disk; GET_ID answers the serial
        // Firecracker derives from the image, not the id.
        for drive in drives {
            configuration.disks.append(DiskConfiguration(path: drive.pathOnHost, id: drive.driveID, readOnly: drive.isReadOnly,
                                                         serialFromImage: true, rateLimiter: drive.rateLimiter))
        }
        // Firecracker's convention: the root drive goes on the kernel command line.
        if let root = drives.first, root.isRootDevice {
            let device = root.partUUID.map { "PARTUUID=\($0)" } ?? "/dev/vda"
            configuration.commandLine += " root=\(device) \(root.isReadOnly ? "ro" : "rw")"
        }
        var interfaces: [VMM.NetworkInterfaceConfiguration] = []
        for interface in networkInterfaces {
            if let mtu = interface.mtu, mtu != 1500 {
                throw .badRequest("network interface '\(interface.interfaceID)': mtu \(mtu) is not supported (the device offers no MTU; the guest uses 1500)")
            }
            do {
                var made = try VMM.NetworkInterfaceConfiguration.make(
                    id: interface.interfaceID, tapName: interface.hostDeviceName, tapDescriptor: nil, mac: interface.guestMAC)
                made.receiveRateLimiter = interface.receiveRateLimiter
                made.transmitRateLimiter = interface.transmitRateLimiter
                interfaces.append(made)
            } catch {
                // .network errors already name the interface.
                if case .network = error { throw .badRequest("\(error)") }
                throw .badRequest("network interface '\(interface.interfaceID)': \(error)")
            }
        }
        // Interfaces from the command line (--net with --kernel) come first.
        configuration.networkInterfaces += interfaces
    }
}
