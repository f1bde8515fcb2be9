import Glibc
import HostSystem
import LeanJSON
import Synchronization
import VMM

/// The VM as the control API sees it: its configuration before start, the
/// running `VirtualMachine` after, and the request handlers. Handlers run on
/// the API thread; the main thread runs the VM and tells the controller when
/// a run starts and ends. Every handler either changes state and succeeds,
/// or throws an `APIError` and changes nothing.
public final class InstanceController: Sendable {
    public enum Phase: Sendable, Equatable {
        case notStarted, running, ended
    }

    /// What `waitForStart` returns.
    public enum StartOutcome: Sendable {
        case started(VirtualMachine)
        case signalled(Int32)
    }

    struct State: Sendable {
        var configuration: InstanceConfiguration
        var phase: Phase = .notStarted
        /// The running machine (nil before start, between reboots and after the end).
        var machine: VirtualMachine?
        /// Built by InstanceStart, waiting for the main thread to run it.
        var handoff: VirtualMachine?
        /// An API Reboot asked for the next run to start afresh.
        var resetRequested = false
        /// Shutdown with timeout_ms: when to stop the VM if it is still running (monotonic ns).
        var shutdownDeadline: UInt64?
        var boots = 0
        /// PUT /metrics: where FlushMetrics appends a line of JSON.
        var metricsFile: OwnedFileDescriptor?
    }

    public let instanceID: String
    public let vmmVersion: String
    let state: Mutex<State>
    let log: APILog
    let router = Router()
    /// Wakes the main thread when InstanceStart has built a machine.
    let startEvent: EventFD
    let makeMachine: @Sendable (VMConfiguration) throws(VMMError) -> VirtualMachine

    public init(instanceID: String, vmmVersion: String, configuration: InstanceConfiguration, log: APILog = APILog(),
                makeMachine: @escaping @Sendable (VMConfiguration) throws(VMMError) -> VirtualMachine = { (configuration) throws(VMMError) in
                    try VirtualMachine(configuration: configuration)
                }) throws(SystemCallError) {
        self.instanceID = instanceID
        self.vmmVersion = vmmVersion
        self.log = log
        self.makeMachine = makeMachine
        state = Mutex(State(configuration: configuration))
        startEvent = try EventFD()
    }

    // MARK: Main thread

    /// Builds and records the machine for a VM that boots at once (`--kernel`, `--config-file`).
    public func startNow() throws(VMMError) -> VirtualMachine {
        let configuration: VMConfiguration
        do {
            configuration = try state.withLock { try $0.configuration.vmConfiguration() }
        } catch {
            throw .boot(step: "cannot start the VM", message: "\(error)")
        }
        let machine = try makeMachine(configuration)
        state.withLock { state in
            state.phase = .running
            state.machine = machine
            state.boots += 1
        }
        log.write("instance started (vcpus \(configuration.cpuCount), memory \(MemorySize.format(configuration.memorySize)))")
        return machine
    }

    /// Waits until InstanceStart has built a machine, or a signal in `signals` arrives.
    public func waitForStart(signals: SignalFD) -> StartOutcome {
        let epoll: Epoll
        do {
            epoll = try Epoll()
            try epoll.add(startEvent.descriptor.rawValue, token: 0)
            try epoll.add(signals.descriptor.rawValue, token: 1)
        } catch {
            return .signalled(0)
        }
        while true {
            if let machine = state.withLock({ state -> VirtualMachine? in
                defer { state.handoff = nil }
                return state.handoff
            }) {
                return .started(machine)
            }
            let events = (try? epoll.wait(timeout: -1)) ?? []
            if events.contains(where: { $0.token == 1 }), let signal = signals.next() {
                state.withLock { $0.phase = .ended }
                return .signalled(signal)
            }
            _ = try? startEvent.consume()
        }
    }

    /// The run of `machine` returned `reason`. Returns true when the API
    /// asked for a reboot, so the caller should boot again whatever the
    /// on-reboot setting says.
    public func runEnded(_ reason: VMExitReason) -> Bool {
        log.write("run ended: \(reason.description.split(separator: "\n").first ?? "")")
        return state.withLock { state in
            state.machine = nil
            state.shutdownDeadline = nil
            defer { state.resetRequested = false }
            return state.resetRequested && reason == .rebootRequested
        }
    }

    /// The main thread builds the VM again after a reboot.
    public func restart() throws(VMMError) -> VirtualMachine {
        let configuration: VMConfiguration
        do {
            configuration = try state.withLock { try $0.configuration.vmConfiguration() }
        } catch {
            throw .boot(step: "cannot restart the VM", message: "\(error)")
        }
        let machine = try makeMachine(configuration)
        state.withLock { state in
            state.machine = machine
            state.boots += 1
        }
        log.write("instance rebooted")
        return machine
    }

    /// The process is about to exit.
    public func finish() {
        state.withLock { state in
            state.phase = .ended
            state.machine = nil
        }
    }

    // MARK: API thread: timers

    /// When `tick` should run next (monotonic ns), if ever.
    var nextDeadline: UInt64? { state.withLock { $0.shutdownDeadline } }

    /// Enforces a Shutdown's timeout.
    func tick(now: UInt64) {
        let machine = state.withLock { state -> VirtualMachine? in
            guard let deadline = state.shutdownDeadline, now >= deadline else { return nil }
            state.shutdownDeadline = nil
            return state.machine
        }
        guard let machine, !machine.hasStopped else { return }
        log.write("the guest did not power off before the shutdown timeout; stopping it")
        machine.stop(.stoppedByUser)
    }

    // MARK: API thread: requests

    /// Answers one request.
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        let response: HTTPResponse
        switch router.match(method: request.method, path: request.path) {
        case .notFound:
            response = .fault(404, "no resource at '\(request.path.prefix(200))'; see docs/api/vmm-api.yaml")
        case let .methodNotAllowed(allowed):
            var fault = HTTPResponse.fault(405, "\(request.method) is not allowed on '\(request.path)'; allowed: \(allowed.joined(separator: ", "))")
            fault.headers.append(("Allow", allowed.joined(separator: ", ")))
            response = fault
        case let .operation(operation, parameters):
            do {
                response = try perform(operation, parameters: parameters, request: request)
            } catch {
                response = error.response
            }
        }
        if request.method != "GET" || response.status >= 400 {
            log.write("\(request.method) \(request.path) -> \(response.status)")
        }
        return response
    }

    func perform(_ operation: APIOperation, parameters: [String: String], request: HTTPRequest) throws(APIError) -> HTTPResponse {
        let body = request.body
        switch operation {
        case .describeInstance:
            return .json(instanceInfo)
        case .getMachineConfiguration:
            return .json(state.withLock { $0.configuration.machine.json })
        case .getExportVmConfig:
            return .json(state.withLock { $0.configuration.json })
        case .putMachineConfiguration, .patchMachineConfiguration:
            let fields = try JSONFields(body: body, context: "machine-config")
            try updateBeforeBoot("machine-config") { (configuration) throws(APIError) in
                configuration.machine = try MachineConfiguration(
                    json: fields, updating: operation == .patchMachineConfiguration ? configuration.machine : nil)
            }
            return .noContent
        case .putGuestBootSource:
            let source = try BootSource(json: JSONFields(body: body, context: "boot-source"))
            try updateBeforeBoot("boot-source") { $0.bootSource = source }
            return .noContent
        case .putGuestDriveByID:
            let id = parameters["drive_id"] ?? ""
            try InstanceConfiguration.checkID(id, what: "drive")
            let drive = try DriveConfiguration(json: JSONFields(body: body, context: "drive '\(id)'"), pathID: id)
            try updateBeforeBoot("drives") { (configuration) throws(APIError) in try configuration.putDrive(drive) }
            return .noContent
        case .patchGuestDriveByID:
            let id = parameters["drive_id"] ?? ""
            let patch = try DriveConfiguration.patch(json: JSONFields(body: body, context: "drive '\(id)'"), pathID: id)
            try patchDrive(id: id, patch)
            return .noContent
        case .putGuestNetworkInterfaceByID:
            let id = parameters["iface_id"] ?? ""
            try InstanceConfiguration.checkID(id, what: "network interface")
            let interface = try NetworkInterfaceConfiguration(json: JSONFields(body: body, context: "network interface '\(id)'"), pathID: id)
            try updateBeforeBoot("network-interfaces") { (configuration) throws(APIError) in try configuration.putNetworkInterface(interface) }
            return .noContent
        case .patchGuestNetworkInterfaceByID:
            let id = parameters["iface_id"] ?? ""
            let patch = try NetworkInterfaceConfiguration.patch(json: JSONFields(body: body, context: "network interface '\(id)'"), pathID: id)
            try patchNetworkInterface(id: id, patch)
            return .noContent
        case .createSyncAction:
            return try performAction(JSONFields(body: body, context: "actions"))
        case .patchVm:
            let fields = try JSONFields(body: body, context: "vm")
            try fields.allowOnly(["state"])
            switch try fields.requiredString("state") {
            case "Paused": try pause()
            case "Resumed": try resume()
            case let other: throw .badRequest("vm: 'state' '\(other)' is not one of Paused, Resumed")
            }
            return .noContent
        case .getMetrics:
            return .json(try metrics())
        case .putEntropyDevice:
            let fields = try JSONFields(body: body.isEmpty ? Array("{}".utf8) : body, context: "entropy")
            try fields.allowOnly(["rate_limiter"])
            let limiter = try RateLimiterJSON.configuration(fields, key: "rate_limiter")
            try updateBeforeBoot("entropy") { configuration in
                configuration.base.entropyDevice = true
                configuration.base.entropyRateLimiter = limiter
            }
            return .noContent
        case .putLogger:
            let fields = try JSONFields(body: body, context: "logger")
            try fields.allowOnly(["log_path", "level", "show_level", "show_log_origin", "module"])
            if let level = try fields.string("level"), !["error", "warning", "info", "debug", "trace", "off"].contains(level.lowercased()) {
                throw .badRequest("logger: 'level' '\(level)' is not one of Error, Warning, Info, Debug, Trace, Off")
            }
            _ = try fields.bool("show_level")
            _ = try fields.bool("show_log_origin")
            _ = try fields.string("module")
            if let path = try fields.string("log_path") {
                do {
                    try log.open(path: path)
                } catch {
                    throw .badRequest("logger: cannot open 'log_path' '\(path)': \(error.errno)")
                }
            }
            return .noContent
        case .putMetrics:
            let fields = try JSONFields(body: body, context: "metrics")
            try fields.allowOnly(["metrics_path"])
            let path = try fields.requiredString("metrics_path")
            let file: OwnedFileDescriptor
            do {
                file = try OwnedFileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, mode: 0o600)
            } catch {
                throw .badRequest("metrics: cannot open 'metrics_path' '\(path)': \(error.errno)")
            }
            try state.withLock { (state) throws(APIError) in
                guard state.metricsFile == nil else { throw .badRequest("metrics: the metrics file is already set") }
                state.metricsFile = file
            }
            return .noContent
        }
    }

    /// Applies `change` to the configuration if the VM has not started.
    func updateBeforeBoot(_ resource: String, _ change: (inout InstanceConfiguration) throws(APIError) -> Void) throws(APIError) {
        try state.withLock { (state) throws(APIError) in
            guard state.phase == .notStarted else {
                throw .conflict("\(resource) can only be changed before the VM starts (the VM is \(Self.stateName(state)))")
            }
            var configuration = state.configuration
            try change(&configuration)
            state.configuration = configuration
        }
    }

    /// Firecracker's answer to a PATCH of a device before InstanceStart.
    static let notSupportedBeforeStart = "The requested operation is not supported before starting the microVM."

    /// PATCH /drives/{id} on a running VM: a new backing file (opened and
    /// checked first; on error the drive keeps its image) and/or new rate
    /// limiter buckets. The configuration records them, so GET /vm/config
    /// shows them and a reboot keeps them.
    func patchDrive(id: String, _ patch: DriveConfiguration.Patch) throws(APIError) {
        let machine = try machineForPatch(resource: "drive '\(id)'")
        let known = state.withLock { state in
            state.configuration.drives.contains { $0.driveID == id } || state.configuration.base.disks.contains { $0.id == id }
        }
        guard known else { throw .badRequest("no drive '\(id)'; drives are added with PUT /drives/{id} before InstanceStart") }
        do {
            try machine.updateDrive(id: id, path: patch.pathOnHost, rateLimiter: patch.rateLimiter)
        } catch {
            throw .badRequest("drive '\(id)': \(error)\(patch.pathOnHost == nil ? "" : "; the drive keeps its current image")")
        }
        state.withLock { state in
            if let index = state.configuration.drives.firstIndex(where: { $0.driveID == id }) {
                if let path = patch.pathOnHost { state.configuration.drives[index].pathOnHost = path }
                state.configuration.drives[index].rateLimiter = state.configuration.drives[index].rateLimiter.applying(patch.rateLimiter)
            } else if let index = state.configuration.base.disks.firstIndex(where: { $0.id == id }) {
                if let path = patch.pathOnHost { state.configuration.base.disks[index].path = path }
                state.configuration.base.disks[index].rateLimiter = state.configuration.base.disks[index].rateLimiter.applying(patch.rateLimiter)
            }
        }
        log.write("drive '\(id)' updated\(patch.pathOnHost.map { ": now \($0)" } ?? "")")
    }

    /// PATCH /network-interfaces/{id} on a running VM: new rx/tx rate limiter buckets.
    func patchNetworkInterface(id: String, _ patch: NetworkInterfaceConfiguration.Patch) throws(APIError) {
        let machine = try machineForPatch(resource: "network interface '\(id)'")
        let known = state.withLock { state in
            state.configuration.networkInterfaces.contains { $0.interfaceID == id } || state.configuration.base.networkInterfaces.contains { $0.id == id }
        }
        guard known else { throw .badRequest("no network interface '\(id)'; interfaces are added with PUT /network-interfaces/{id} before InstanceStart") }
        do {
            try machine.updateNetworkInterface(id: id, receive: patch.receive, transmit: patch.transmit)
        } catch {
            throw .badRequest("network interface '\(id)': \(error)")
        }
        state.withLock { state in
            if let index = state.configuration.networkInterfaces.firstIndex(where: { $0.interfaceID == id }) {
                state.configuration.networkInterfaces[index].receiveRateLimiter = state.configuration.networkInterfaces[index].receiveRateLimiter.applying(patch.receive)
                state.configuration.networkInterfaces[index].transmitRateLimiter = state.configuration.networkInterfaces[index].transmitRateLimiter.applying(patch.transmit)
            } else if let index = state.configuration.base.networkInterfaces.firstIndex(where: { $0.id == id }) {
                state.configuration.base.networkInterfaces[index].receiveRateLimiter = state.configuration.base.networkInterfaces[index].receiveRateLimiter.applying(patch.receive)
                state.configuration.base.networkInterfaces[index].transmitRateLimiter = state.configuration.base.networkInterfaces[index].transmitRateLimiter.applying(patch.transmit)
            }
        }
    }

    /// The running machine a PATCH applies to; before InstanceStart, Firecracker's refusal.
    func machineForPatch(resource: String) throws(APIError) -> VirtualMachine {
        try state.withLock { (state) throws(APIError) -> VirtualMachine in
            guard state.phase != .notStarted else { throw .badRequest(Self.notSupportedBeforeStart) }
            guard let machine = state.machine, state.phase == .running, !machine.hasStopped else {
                throw .badRequest("\(resource): the VM is not running (it is \(Self.stateName(state)))")
            }
            return machine
        }
    }

    static let actionTypes = ["InstanceStart", "SendCtrlAltDel", "FlushMetrics", "Shutdown", "Reboot", "Stop"]

    func performAction(_ fields: JSONFields) throws(APIError) -> HTTPResponse {
        try fields.allowOnly(["action_type", "timeout_ms"])
        let action = try fields.requiredString("action_type")
        guard Self.actionTypes.contains(action) else {
            throw .badRequest("actions: 'action_type' '\(action)' is not one of \(Self.actionTypes.joined(separator: ", "))")
        }
        let timeout = try fields.integer("timeout_ms", in: 1...86_400_000)
        if timeout != nil && action != "Shutdown" {
            throw .badRequest("actions: 'timeout_ms' applies only to Shutdown")
        }
        switch action {
        case "InstanceStart":
            try startInstance()
        case "FlushMetrics":
            // Appends GET /metrics' document to the PUT /metrics file, if one is set.
            if let file = state.withLock({ $0.metricsFile }) {
                try? file.writeAll(Array((try metrics() + "\n").utf8))
            }
        case "SendCtrlAltDel", "Shutdown":
            let machine = try runningMachine(for: action)
            guard !machine.isPaused else { throw .conflict("\(action): the VM is paused; resume it first so the guest can shut down") }
            if let timeout {
                state.withLock { $0.shutdownDeadline = Self.monotonicNow() &+ timeout &* 1_000_000 }
            }
            machine.pressPowerButton()
        case "Reboot":
            let machine = try runningMachine(for: action)
            state.withLock { $0.resetRequested = true }
            machine.stop(.rebootRequested)
        default:  // "Stop"
            let machine = try runningMachine(for: action)
            machine.stop(.stoppedByUser)
        }
        log.write("action \(action)")
        return .noContent
    }

    func startInstance() throws(APIError) {
        let configuration = try state.withLock { (state) throws(APIError) -> VMConfiguration in
            guard state.phase == .notStarted else { throw .conflict("InstanceStart: the VM has already started") }
            return try state.configuration.vmConfiguration()
        }
        // Built here so that a bad kernel path or size is this request's 400.
        let machine: VirtualMachine
        do {
            machine = try makeMachine(configuration)
        } catch {
            throw .badRequest("InstanceStart: \(error)")
        }
        try state.withLock { (state) throws(APIError) in
            guard state.phase == .notStarted else { throw .conflict("InstanceStart: the VM has already started") }
            state.phase = .running
            state.machine = machine
            state.handoff = machine
            state.boots += 1
        }
        try? startEvent.signal()
    }

    func runningMachine(for action: String) throws(APIError) -> VirtualMachine {
        try state.withLock { (state) throws(APIError) -> VirtualMachine in
            guard let machine = state.machine, state.phase == .running, !machine.hasStopped else {
                throw .conflict("\(action): the VM is not running (it is \(Self.stateName(state)))")
            }
            return machine
        }
    }

    func pause() throws(APIError) {
        let machine = try runningMachine(for: "pause")
        guard machine.pause() else {
            throw APIError(500, "pause: some vCPU did not stop within 2 s; the VM stays paused (PATCH /vm Resumed undoes it)")
        }
    }

    func resume() throws(APIError) {
        let machine = try runningMachine(for: "resume")
        machine.resume()
    }

    var instanceInfo: String {
        let stateName = state.withLock { Self.stateName($0) }
        return JSONText.object([
            ("id", JSONText.string(instanceID)), ("state", JSONText.string(stateName)),
            ("vmm_version", JSONText.string(vmmVersion)), ("app_name", JSONText.string("swiftlet")),
        ])
    }

    /// Firecracker's state names: "Not started", "Running", "Paused".
    static func stateName(_ state: State) -> String {
        switch state.phase {
        case .notStarted: "Not started"
        case .ended: "Not started"  // Firecracker has no name for it; the process is exiting.
        case .running: state.machine?.isPaused == true ? "Paused" : "Running"
        }
    }

    func metrics() throws(APIError) -> String {
        let (machine, stateName, boots, configuration) = state.withLock { ($0.machine, Self.stateName($0), $0.boots, $0.configuration) }
        var members: [(String, String)] = [
            ("id", JSONText.string(instanceID)), ("state", JSONText.string(stateName)), ("boots", "\(boots)"),
            ("vcpu_count", "\(configuration.machine.vcpuCount)"), ("mem_size_mib", "\(configuration.machine.memorySizeMiB)"),
        ]
        guard let counters = machine?.counters() else {
            members.append(("uptime_ms", "0"))
            return JSONText.object(members)
        }
        func exits(_ list: [(kind: VCPUExitKind, count: UInt64)]) -> String {
            JSONText.object(list.map { ($0.kind.name, "\($0.count)") } + [("total", "\(list.reduce(UInt64(0)) { $0 &+ $1.count })")])
        }
        members += [
            ("uptime_ms", "\(counters.uptimeNanoseconds / 1_000_000)"),
            ("paused_ms", "\(counters.pausedNanoseconds / 1_000_000)"),
            ("exits", exits(counters.exits)),
            ("vcpus", JSONText.array(counters.exitsPerVCPU.enumerated().map { index, list in
                JSONText.object([("id", "\(index)"), ("exits", exits(list))])
            })),
            ("serial", JSONText.object([("bytes_out", "\(counters.serialBytesOut)")])),
            ("devices", JSONText.array(counters.devices.map { device in
                JSONText.object([("name", JSONText.string(device.device))] + device.counters.map { ($0.name, "\($0.value)") })
            })),
        ]
        return JSONText.object(members)
    }

    static func monotonicNow() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}

/// The `--log-path` file: one line per lifecycle event and changing request.
public final class APILog: Sendable {
    let descriptor: Mutex<OwnedFileDescriptor?>

    /// No log.
    public init() { descriptor = Mutex(nil) }

    /// Appends to `path` (created if missing).
    public init(path: String) throws(SystemCallError) {
        // Non-blocking: a log that cannot keep up loses lines rather than stalling the VMM.
        descriptor = Mutex(try OwnedFileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, mode: 0o600))
    }

    /// Logs to `path` from now on (Firecracker's PUT /logger).
    func open(path: String) throws(SystemCallError) {
        let file = try OwnedFileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, mode: 0o600)
        descriptor.withLock { $0 = file }
    }

    public func write(_ message: String) {
        guard let descriptor = descriptor.withLock({ $0 }) else { return }
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var broken = tm()
        var seconds = time.tv_sec
        gmtime_r(&seconds, &broken)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let stamp = "\(broken.tm_year + 1900)-\(two(broken.tm_mon + 1))-\(two(broken.tm_mday))T\(two(broken.tm_hour)):\(two(broken.tm_min)):\(two(broken.tm_sec))Z"
        try? descriptor.writeAll(Array("\(stamp) swiftlet-vmm: \(message)\n".utf8))
    }
}
