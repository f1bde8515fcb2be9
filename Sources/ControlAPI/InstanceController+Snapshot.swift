import Glibc
import LeanJSON
import MMDS
import VMM

/// `PUT /snapshot/create` body: Firecracker's `CreateSnapshotParams`.
struct SnapshotCreateRequest: Equatable, Sendable {
    enum Kind: String, Sendable { case full = "Full", diff = "Diff" }
    static let fields = ["snapshot_type", "snapshot_path", "mem_file_path"]

    var kind: Kind
    var snapshotPath: String
    var memoryPath: String

    init(json fields: JSONFields) throws(APIError) {
        try fields.allowOnly(Self.fields)
        let type = try fields.string("snapshot_type") ?? "Full"
        guard let kind = Kind(rawValue: type) else {
            throw .deserialization("unknown variant `\(type.prefix(40))`, expected `Full` or `Diff`")
        }
        self.kind = kind
        snapshotPath = try fields.requiredString("snapshot_path")
        memoryPath = try fields.requiredString("mem_file_path")
    }
}

/// `PUT /snapshot/load` body: Firecracker's `LoadSnapshotConfig`, checked
/// as its parser does (unknown fields refused, exactly one of
/// `mem_backend` and the deprecated `mem_file_path`).
struct SnapshotLoadRequest: Equatable, Sendable {
    enum Backend: String, Sendable { case file = "File", uffd = "Uffd" }
    enum HugePages: String, Sendable { case snapshot = "Snapshot", none = "None", transparent = "Transparent", hugetlbfs2M = "2M" }
    static let fields = ["snapshot_path", "mem_file_path", "mem_backend", "enable_diff_snapshots", "track_dirty_pages", "resume_vm",
                         "network_overrides", "vsock_override", "clock_realtime", "huge_pages"]
    /// Firecracker's words for the two `mem_*` refusals.
    static let missingMemory = "missing field: either `mem_backend` or `mem_file_path` is required"
    static let tooManyMemory = "too many fields: either `mem_backend` or `mem_file_path` exclusively is required"

    var snapshotPath: String
    var backend: Backend
    var memoryPath: String
    var trackDirtyPages: Bool
    var resume: Bool
    /// Interface id to the tap its restore uses instead of the saved one.
    var networkOverrides: [(interfaceID: String, tap: String)]
    var vsockPath: String?
    var clockRealtime: Bool
    var hugePages: HugePages
    /// `mem_file_path` or `enable_diff_snapshots` was used (the answer carries `Deprecation: true`).
    var deprecated: Bool

    static func == (lhs: SnapshotLoadRequest, rhs: SnapshotLoadRequest) -> Bool {
        lhs.snapshotPath == rhs.snapshotPath && lhs.backend == rhs.backend && lhs.memoryPath == rhs.memoryPath
            && lhs.trackDirtyPages == rhs.trackDirtyPages && lhs.resume == rhs.resume && lhs.vsockPath == rhs.vsockPath
            && lhs.networkOverrides.elementsEqual(rhs.networkOverrides) { $0 == $1 } && lhs.clockRealtime == rhs.clockRealtime
            && lhs.hugePages == rhs.hugePages && lhs.deprecated == rhs.deprecated
    }

    init(json fields: JSONFields) throws(APIError) {
        try fields.allowOnly(Self.fields)
        snapshotPath = try fields.requiredString("snapshot_path")
        let deprecatedPath = try fields.string("mem_file_path")
        var backendObject: JSONFields?
        if let value = fields.value("mem_backend") { backendObject = try JSONFields(value, context: "mem_backend") }
        switch (backendObject, deprecatedPath) {
        case (_?, _?): throw .deserialization(Self.tooManyMemory)
        case (nil, nil): throw .deserialization(Self.missingMemory)
        case let (nil, path?):
            backend = .file
            memoryPath = path
        case let (object?, nil):
            try object.allowOnly(["backend_type", "backend_path"])
            let type = try object.requiredString("backend_type")
            guard let kind = Backend(rawValue: type) else {
                throw .deserialization("unknown variant `\(type.prefix(40))`, expected `File` or `Uffd`")
            }
            backend = kind
            memoryPath = try object.requiredString("backend_path")
        }
        let enableDiff = try fields.bool("enable_diff_snapshots") ?? false
        let track = try fields.bool("track_dirty_pages") ?? false
        trackDirtyPages = enableDiff || track
        deprecated = deprecatedPath != nil || enableDiff
        resume = try fields.bool("resume_vm") ?? false
        networkOverrides = []
        if let list = fields.value("network_overrides") {
            guard case let .array(elements) = list else { throw fields.mismatch("network_overrides", list, "an array of objects") }
            for element in elements {
                let item = try JSONFields(element, context: "network_overrides")
                try item.allowOnly(["iface_id", "host_dev_name"])
                networkOverrides.append((try item.requiredString("iface_id"), try item.requiredString("host_dev_name")))
            }
        }
        if let value = fields.value("vsock_override") {
            let item = try JSONFields(value, context: "vsock_override")
            try item.allowOnly(["uds_path"])
            vsockPath = try item.requiredString("uds_path")
        }
        clockRealtime = try fields.bool("clock_realtime") ?? false
        let pages = try fields.string("huge_pages") ?? "Snapshot"
        guard let hugePages = HugePages(rawValue: pages) else {
            throw .deserialization("unknown variant `\(pages.prefix(40))`, expected one of `Snapshot`, `None`, `Transparent`, `2M`")
        }
        self.hugePages = hugePages
    }

    /// What Swiftlet cannot do yet, refused before anything is read.
    func checkSupported() throws(APIError) {
        if hugePages == .hugetlbfs2M {
            throw .badRequest("Load snapshot error: huge_pages 2M (hugetlbfs guest memory) is not supported by Swiftlet yet, with either memory backend")
        }
    }
}

extension InstanceController {
    /// Firecracker's refusal of a load once a boot-specific resource was configured.
    static let loadNotAllowed = APIError(400, "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")

    /// Routes whose use (even refused) rules out a later snapshot load, as in
    /// Firecracker's pre-boot controller (`boot_path`).
    static let bootSpecificOperations: Set<APIOperation> = [
        .putGuestBootSource, .putMachineConfiguration, .patchMachineConfiguration, .putGuestDriveByID,
        .putGuestNetworkInterfaceByID, .putGuestVsock, .putGuestVsockByID, .putMmdsConfig, .putEntropyDevice,
    ]

    /// `PUT /snapshot/create`: the running VM must be paused; Diff needs dirty-page tracking.
    func createSnapshot(_ request: SnapshotCreateRequest) throws(APIError) {
        let machine = try machineAfterBoot(for: "create snapshot")
        guard machine.isPaused else {
            throw .badRequest("Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
        }
        let start = Self.monotonicNow()
        do {
            try machine.createSnapshot(statePath: request.snapshotPath, memoryPath: request.memoryPath, diff: request.kind == .diff)
        } catch {
            throw .badRequest("Create snapshot error: \(error)")
        }
        let elapsed = (Self.monotonicNow() &- start) / 1000
        let kind = request.kind == .diff ? "diff" : "full"
        recordLatency("\(kind)_create_snapshot", elapsed)
        recordLatency("vmm_\(kind)_create_snapshot", elapsed)
        log.write("'create \(kind) snapshot' VMM action took \(elapsed) us.")
    }

    /// `PUT /snapshot/load`: only on a fresh process. Builds the VM from the
    /// files (nothing changes if that fails), hands it to the main thread
    /// paused, and resumes it if asked.
    func loadSnapshot(_ request: SnapshotLoadRequest) throws(APIError) {
        let start = Self.monotonicNow()
        let (service, process) = try state.withLock { (state) throws(APIError) in
            guard state.phase == .notStarted else { throw .notSupportedAfterStart }
            guard !state.bootConfigured else { throw Self.loadNotAllowed }
            return (state.configuration.mmds.service, state.configuration.base)
        }
        try request.checkSupported()
        let machine: VirtualMachine
        var savedMMDS: MMDSConfiguration?
        do {
            var saved = try SavedMachine.read(from: request.snapshotPath)
            try Self.apply(request, to: &saved.configuration)
            // This process's own settings, not the snapshot's: where the
            // console goes (--serial, PUT /serial), the reboot action, the
            // KVM device and the boot timer.
            saved.configuration.serial = process.serial
            saved.configuration.onReboot = process.onReboot
            saved.configuration.kvmDevicePath = process.kvmDevicePath
            saved.configuration.bootTimer = process.bootTimer
            // Firecracker takes dirty-page tracking from the load request, not the snapshot.
            saved.configuration.trackDirtyPages = request.trackDirtyPages
            // The guest clock advances by the wall time since the snapshot (refused when the host or the snapshot cannot).
            saved.kvmState.clockRealtime = request.clockRealtime
            if let attachment = saved.configuration.metadataService {
                // MMDS data lives in this process: its service answers the restored guest.
                saved.configuration.metadataService = MetadataServiceAttachment(service: service, address: attachment.address,
                                                                                interfaceIDs: attachment.interfaceIDs)
                savedMMDS = MMDSConfiguration(version: attachment.service.version, interfaceIDs: attachment.interfaceIDs,
                                              address: attachment.address, imdsCompatible: attachment.service.imdsCompatible)
            }
            switch request.backend {
            case .file: machine = try loadMachine(saved, request.memoryPath)
            case .uffd: machine = try loadMachineWithHandler(saved, request.memoryPath)
            }
        } catch {
            throw .badRequest("Load snapshot error: Failed to restore from snapshot: \(error)")
        }
        // Parked before its vCPU threads exist: they start parked.
        _ = machine.pause()
        let configuration = machine.configuration
        try state.withLock { (state) throws(APIError) in
            guard state.phase == .notStarted, !state.bootConfigured else { throw Self.loadNotAllowed }
            var instance = state.configuration
            instance.base = configuration
            instance.bootSource = nil
            // The disks as Firecracker drives, so GET /vm/config lists them
            // and PATCH /drives finds them (the root is vda with root= set).
            instance.drives = configuration.disks.enumerated().map { index, disk in
                DriveConfiguration(driveID: disk.id, pathOnHost: disk.path,
                                   isRootDevice: index == 0 && configuration.commandLine.contains("root=/dev/vda"),
                                   isReadOnly: disk.readOnly, rateLimiter: disk.rateLimiter)
            }
            instance.base.disks = []
            instance.networkInterfaces = []
            instance.machine = MachineConfiguration(vcpuCount: configuration.cpuCount, memorySizeMiB: configuration.memorySize >> 20)
            instance.machine.trackDirtyPages = request.trackDirtyPages
            instance.machine.hugePages = configuration.transparentHugePages ? "Transparent" : "None"
            if let mmds = savedMMDS {
                // As Firecracker's restore: the saved MMDS configuration, an empty data store the API can fill.
                instance.mmds.configure(mmds)
            }
            state.configuration = instance
            state.phase = .running
            state.machine = machine
            state.handoff = machine
            state.boots += 1
            state.nextMetricsFlush = Self.monotonicNow() &+ Self.metricsPeriod
        }
        try? startEvent.signal()
        if request.resume { machine.resume() }
        let elapsed = (Self.monotonicNow() &- start) / 1000
        recordLatency("load_snapshot", elapsed)
        recordLatency("vmm_load_snapshot", elapsed)
        log.write("'load snapshot' VMM action took \(elapsed) us.")
    }

    /// The request's overrides: taps, the vsock socket, huge pages.
    static func apply(_ request: SnapshotLoadRequest, to configuration: inout VMConfiguration) throws(VMMError) {
        for override in request.networkOverrides {
            guard let index = configuration.networkInterfaces.firstIndex(where: { $0.id == override.interfaceID }) else {
                throw .invalidConfiguration(field: "network_overrides iface_id", value: override.interfaceID,
                                            expected: "the id of one of the snapshot's network interfaces")
            }
            configuration.networkInterfaces[index].tap = .name(override.tap)
        }
        if let path = request.vsockPath {
            guard configuration.vsock != nil else {
                throw .invalidConfiguration(field: "vsock_override", value: path, expected: "a snapshot with a vsock device")
            }
            configuration.vsock?.udsPath = path
        }
        switch request.hugePages {
        case .snapshot, .hugetlbfs2M: break
        case .none: configuration.transparentHugePages = false
        case .transparent: configuration.transparentHugePages = true
        }
    }

    /// Firecracker's `latencies_us` values: the last measurement, in µs.
    func recordLatency(_ name: String, _ microseconds: UInt64) {
        state.withLock { $0.latencies["latencies_us.\(name)"] = microseconds }
    }
}
