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
        /// When the next periodic metrics line is due (monotonic ns), once the VM runs.
        var nextMetricsFlush: UInt64?
        /// API requests by Firecracker's metric name ("put_api_requests.actions_count").
        var requestCounts: [String: UInt64] = [:]
        /// Microseconds from process start to the API being served (`--start-time-us`), and its CPU time.
        var startupMicroseconds: UInt64?
        var startupCPUMicroseconds: UInt64?
        /// Metric totals of runs that have ended (before reboots), by Firecracker's names.
        var finishedRunMetrics: [String: UInt64] = [:]
        /// PUT /vsock bound this socket; the device built at start uses it.
        var vsockReservation: VsockSocketReservation?
        /// A boot-specific resource was configured (Firecracker's `boot_path`): no snapshot load.
        var bootConfigured = false
        /// Firecracker's `latencies_us` (snapshot, pause and resume times), by full metric name.
        var latencies: [String: UInt64] = [:]
    }

    public let instanceID: String
    public let vmmVersion: String
    let state: Mutex<State>
    let log: APILog
    let router = Router()
    /// Wakes the main thread when InstanceStart has built a machine.
    let startEvent: EventFD
    let makeMachine: @Sendable (VMConfiguration) throws(VMMError) -> VirtualMachine
    /// Builds the VM of a snapshot load (tests replace it).
    let loadMachine: @Sendable (SavedMachine, String) throws(VMMError) -> VirtualMachine
    /// Builds the VM of a snapshot load with the Uffd backend: the String is
    /// the page-fault handler's socket (tests replace it).
    let loadMachineWithHandler: @Sendable (SavedMachine, String) throws(VMMError) -> VirtualMachine
    /// Firecracker-layout metrics (PUT /metrics, --metrics-path).
    let metricsSink = MetricsSink()

    public init(instanceID: String, vmmVersion: String, configuration: InstanceConfiguration, log: APILog = APILog(),
                makeMachine: @escaping @Sendable (VMConfiguration) throws(VMMError) -> VirtualMachine = { (configuration) throws(VMMError) in
                    try VirtualMachine(configuration: configuration)
                },
                loadMachine: @escaping @Sendable (SavedMachine, String) throws(VMMError) -> VirtualMachine = { (saved, memoryPath) throws(VMMError) in
                    try VirtualMachine(loading: saved, memoryPath: memoryPath)
                },
                loadMachineWithHandler: @escaping @Sendable (SavedMachine, String) throws(VMMError) -> VirtualMachine = { (saved, socketPath) throws(VMMError) in
                    try VirtualMachine(loading: saved, memoryPath: socketPath, memoryBackend: .uffd)
                }) throws(SystemCallError) {
        self.instanceID = instanceID
        self.vmmVersion = vmmVersion
        self.log = log
        log.setInstanceID(instanceID)
        self.makeMachine = makeMachine
        self.loadMachine = loadMachine
        self.loadMachineWithHandler = loadMachineWithHandler
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
        let machine = try buildMachine(configuration)
        state.withLock { state in
            state.phase = .running
            state.machine = machine
            state.boots += 1
            state.nextMetricsFlush = Self.monotonicNow() &+ Self.metricsPeriod
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
            // Firecracker's metrics count over the whole process: keep what this run counted.
            if let counters = state.machine?.counters() {
                state.finishedRunMetrics.merge(Self.metricValues(counters)) { $0 &+ $1 }
            }
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
        let machine = try buildMachine(configuration)
        state.withLock { state in
            state.machine = machine
            state.boots += 1
        }
        log.write("instance rebooted")
        return machine
    }

    /// The process is about to exit: the metrics get a last line, as in Firecracker.
    public func finish() {
        let started = state.withLock { state -> Bool in
            defer {
                state.phase = .ended
                state.machine = nil
            }
            return state.phase != .notStarted
        }
        if started { flushMetrics() }
    }

    // MARK: API thread: timers

    /// When `tick` should run next (monotonic ns), if ever.
    var nextDeadline: UInt64? {
        state.withLock { state in
            [state.shutdownDeadline, state.nextMetricsFlush].compactMap { $0 }.min()
        }
    }

    /// Enforces a Shutdown's timeout and flushes metrics every minute, as Firecracker does.
    func tick(now: UInt64) {
        let (machine, flushDue) = state.withLock { state -> (VirtualMachine?, Bool) in
            var flushDue = false
            if let due = state.nextMetricsFlush, now >= due {
                state.nextMetricsFlush = now &+ Self.metricsPeriod
                flushDue = true
            }
            guard let deadline = state.shutdownDeadline, now >= deadline else { return (nil, flushDue) }
            state.shutdownDeadline = nil
            return (state.machine, flushDue)
        }
        if flushDue { flushMetrics() }
        guard let machine, !machine.hasStopped else { return }
        log.warn("the guest did not power off before the shutdown timeout; stopping it")
        machine.stop(.stoppedByUser)
    }

    /// Firecracker writes metrics every 60 s once the VM runs.
    static let metricsPeriod: UInt64 = 60_000_000_000

    // MARK: API thread: requests

    /// Answers one request.
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        // As Firecracker's: the path and body quoted with escapes (Rust's {:?}); /mmds bodies are not logged.
        let path = JSONText.string(String(request.path.prefix(200)))
        let described = request.body.isEmpty || request.path.hasPrefix("/mmds")
            ? "\(Self.methodName(request.method)) request on \(path)"
            : "\(Self.methodName(request.method)) request on \(path) with body \(JSONText.string(String(decoding: request.body.prefix(1024), as: UTF8.self)))"
        log.write("The API server received a \(described).")
        var response: HTTPResponse
        var operation: APIOperation?
        do {
            let (matched, parameters) = try route(request)
            operation = matched
            response = try perform(matched, parameters: parameters, request: request)
        } catch {
            response = error.response
        }
        countRequest(method: request.method, operation: operation, failed: response.status >= 400)
        if response.status >= 400 {
            let message = json(fault: response) ?? ""
            log.error("Received Error. Status code: \(response.status) \(HTTPResponse.reasonPhrase(response.status)). Message: \(message)")
        } else {
            log.write("The request was executed successfully. Status code: \(response.status) \(HTTPResponse.reasonPhrase(response.status)).")
        }
        return response
    }

    /// Firecracker's checks before a request reaches its handler: a known
    /// path and method, a body on PUT/PATCH and none on GET.
    func route(_ request: HTTPRequest) throws(APIError) -> (APIOperation, [String: String]) {
        let operation: APIOperation, parameters: [String: String]
        switch router.match(method: request.method, path: request.path) {
        case let .operation(matched, matchedParameters): (operation, parameters) = (matched, matchedParameters)
        case .notFound: throw .invalidPathOrMethod(method: request.method, path: request.path)
        case let .methodNotAllowed(allowed): throw .methodNotAllowed(method: request.method, path: request.path, allowed: allowed)
        }
        switch request.method {
        case "GET" where !request.body.isEmpty: throw .badRequest("GET request cannot have a body.")
        case "PUT" where request.body.isEmpty: throw .badRequest("Empty PUT request.")
        case "PATCH" where request.body.isEmpty: throw .badRequest("Empty PATCH request.")
        default: return (operation, parameters)
        }
    }

    /// "Put", "Get", as Firecracker's request log names methods.
    static func methodName(_ method: String) -> String {
        method.prefix(1).uppercased() + method.dropFirst().lowercased()
    }

    func json(fault response: HTTPResponse) -> String? {
        guard let value = try? LeanJSON.JSONParser.parse(response.body) else { return nil }
        return value["fault_message"]?.stringValue
    }

    func perform(_ operation: APIOperation, parameters: [String: String], request: HTTPRequest) throws(APIError) -> HTTPResponse {
        let body = request.body
        if Self.bootSpecificOperations.contains(operation) {
            // Set even if the request fails, as Firecracker does.
            state.withLock { $0.bootConfigured = true }
        }
        switch operation {
        case .describeInstance:
            return .json(instanceInfo)
        case .getFirecrackerVersion:
            return .json(JSONText.object([("firecracker_version", JSONText.string(vmmVersion))]))
        case .getMachineConfiguration:
            return .json(state.withLock { $0.configuration.machine.json })
        case .getExportVmConfig:
            return .json(state.withLock { $0.configuration.json })
        case .putMachineConfiguration, .patchMachineConfiguration:
            let fields = try JSONFields(body: body, context: "machine-config")
            try updateBeforeBoot { (configuration) throws(APIError) in
                configuration.machine = try MachineConfiguration(
                    json: fields, updating: operation == .patchMachineConfiguration ? configuration.machine : nil)
            }
            var response = HTTPResponse.noContent
            if fields.has("cpu_template") {
                // Firecracker marks the static CPU templates deprecated on every use.
                log.warn("\(request.method) /machine-config: cpu_template field is deprecated.")
                response.headers.append(("Deprecation", "true"))
                countDeprecatedCall()
            }
            return response
        case .putGuestBootSource:
            let source = try BootSource(json: JSONFields(body: body, context: "boot-source"))
            // The state first (Firecracker's refusal after start), then the files.
            try updateBeforeBoot { (configuration) throws(APIError) in
                try source.checkFiles()
                configuration.bootSource = source
            }
            return .noContent
        case .putGuestDriveByID:
            let id = parameters["drive_id"] ?? ""
            try InstanceConfiguration.checkID(id, what: "drive")
            let drive = try DriveConfiguration(json: JSONFields(body: body, context: "drive '\(id)'"), pathID: id)
            // The state first: after start the VMM's own lock on the image would answer instead.
            try updateBeforeBoot { (configuration) throws(APIError) in
                try drive.checkFile()
                try configuration.putDrive(drive)
            }
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
            try updateBeforeBoot { (configuration) throws(APIError) in try configuration.putNetworkInterface(interface) }
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
            case let other: throw .deserialization("unknown variant `\(other.prefix(100))`, expected `Paused` or `Resumed`")
            }
            return .noContent
        case .getMetrics:
            return .json(try metrics())
        case .createSnapshot:
            try createSnapshot(SnapshotCreateRequest(json: JSONFields(body: body, context: "snapshot create")))
            return .noContent
        case .loadSnapshot:
            let load = try SnapshotLoadRequest(json: JSONFields(body: body, context: "snapshot load"))
            if load.deprecated { countDeprecatedCall() }
            try loadSnapshot(load)
            var response = HTTPResponse.noContent
            if load.deprecated {
                log.warn("PUT /snapshot/load: mem_file_path and enable_diff_snapshots fields are deprecated.")
                response.headers.append(("Deprecation", "true"))
            }
            return response
        case .putMmds, .patchMmds, .getMmds, .putMmdsConfig:
            return try performMMDS(operation, body: body)
        case .putEntropyDevice:
            let fields = try JSONFields(body: body, context: "entropy")
            try fields.allowOnly(["rate_limiter"])
            let limiter = try RateLimiterJSON.configuration(fields, key: "rate_limiter")
            try updateBeforeBoot { configuration in
                configuration.base.entropyDevice = true
                configuration.base.entropyRateLimiter = limiter
            }
            return .noContent
        case .putSerialDevice:
            // Firecracker's serial console output file (or FIFO with a reader).
            let fields = try JSONFields(body: body, context: "serial")
            try fields.allowOnly(["serial_out_path", "rate_limiter"])
            if fields.has("rate_limiter") { throw .badRequest("serial: 'rate_limiter' is not supported by Swiftlet (the guest's console is not rate-limited)") }
            let path = try fields.string("serial_out_path")
            try updateBeforeBoot { configuration in
                if let path { configuration.base.serial = .file(path: path) }
            }
            return .noContent
        case .putGuestVsock, .putGuestVsockByID:
            // Firecracker's parser ignores what follows /vsock (bandsox sends /vsock/<vsock_id>).
            return try putVsock(body)
        case .putLogger:
            let settings = try LoggerSettings(json: JSONFields(body: body, context: "logger"))
            try updateBeforeBoot { _ in }
            try settings.apply(to: log)
            return .noContent
        case .putMetrics:
            let settings = try MetricsSettings(json: JSONFields(body: body, context: "metrics"))
            try updateBeforeBoot { _ in }
            try settings.apply(to: metricsSink)
            return .noContent
        }
    }

    /// Applies `change` to the configuration if the VM has not started;
    /// afterwards refuses with Firecracker's words. Routes of pre-boot-only
    /// resources (boot source, machine config, vsock, MMDS config, ...) go through here.
    func updateBeforeBoot(_ change: (inout InstanceConfiguration) throws(APIError) -> Void) throws(APIError) {
        try state.withLock { (state) throws(APIError) in
            guard state.phase == .notStarted else { throw .notSupportedAfterStart }
            var configuration = state.configuration
            try change(&configuration)
            state.configuration = configuration
        }
    }

    /// The same, naming the resource (for readers of the handler; the refusal is Firecracker's words either way).
    func updateBeforeBoot(_ resource: String, _ change: (inout InstanceConfiguration) throws(APIError) -> Void) throws(APIError) {
        try updateBeforeBoot(change)
    }

    /// PATCH /drives/{id} on a running VM: a new backing file (opened and
    /// checked first; on error the drive keeps its image) and/or new rate
    /// limiter buckets. The configuration records them, so GET /vm/config
    /// shows them and a reboot keeps them.
    func patchDrive(id: String, _ patch: DriveConfiguration.Patch) throws(APIError) {
        let machine = try machineAfterBoot(for: "drive '\(id)'")
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
        let machine = try machineAfterBoot(for: "network interface '\(id)'")
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

    /// The running machine for a runtime-only request (PATCH of drives and
    /// interfaces, MMDS updates, pause): before InstanceStart, Firecracker's
    /// "not supported before starting"; after the VM stopped, "not running".
    func machineAfterBoot(for action: String = "the request") throws(APIError) -> VirtualMachine {
        try state.withLock { (state) throws(APIError) -> VirtualMachine in
            guard state.phase != .notStarted else { throw .notSupportedBeforeStart }
            guard let machine = state.machine, state.phase == .running, !machine.hasStopped else {
                throw .conflict("\(action): the VM is not running")
            }
            return machine
        }
    }

    static let actionTypes = ["InstanceStart", "SendCtrlAltDel", "FlushMetrics", "Shutdown", "Reboot", "Stop"]

    func performAction(_ fields: JSONFields) throws(APIError) -> HTTPResponse {
        try fields.allowOnly(["action_type", "timeout_ms"])
        let action = try fields.requiredString("action_type")
        guard Self.actionTypes.contains(action) else {
            throw .deserialization("unknown variant `\(action.prefix(100))`, expected one of \(Self.actionTypes.map { "`\($0)`" }.joined(separator: ", "))")
        }
        let timeout = try fields.integer("timeout_ms", in: 1...86_400_000)
        if timeout != nil && action != "Shutdown" {
            throw .badRequest("actions: 'timeout_ms' applies only to Shutdown")
        }
        switch action {
        case "InstanceStart":
            try startInstance()
        case "FlushMetrics":
            _ = try machineAfterBoot(for: action)
            guard metricsSink.isConfigured else {
                throw .badRequest("Internal VMM error: Metrics system not initialized: PUT /metrics (or --metrics-path) first")
            }
            guard flushMetrics() else { throw .badRequest("Internal VMM error: the metrics could not be written") }
        case "SendCtrlAltDel", "Shutdown":
            let machine = try machineAfterBoot(for: action)
            guard !machine.isPaused else { throw .conflict("\(action): the VM is paused; resume it first so the guest can shut down") }
            if let timeout {
                state.withLock { $0.shutdownDeadline = Self.monotonicNow() &+ timeout &* 1_000_000 }
            }
            machine.pressPowerButton()
        case "Reboot":
            let machine = try machineAfterBoot(for: action)
            // Only a Reboot that itself ended the run asks for a new one: if the
            // guest's own reboot (or power-off, or a signal) came first, that
            // stands, and `--on-reboot exit` still exits. Under the state lock,
            // so that `runEnded` sees the request with the reason it belongs to.
            let ended = state.withLock { state -> Bool in
                guard machine.stop(.rebootRequested) else { return false }
                state.resetRequested = true
                return true
            }
            guard ended else { throw .conflict("Reboot: the VM is not running (it is already stopping)") }
        default:  // "Stop"
            let machine = try machineAfterBoot(for: action)
            machine.stop(.stoppedByUser)
        }
        log.write("action \(action)")
        return .noContent
    }

    func startInstance() throws(APIError) {
        let configuration = try state.withLock { (state) throws(APIError) -> VMConfiguration in
            guard state.phase == .notStarted else { throw .notSupportedAfterStart }
            return try state.configuration.vmConfiguration()
        }
        // Built here so that a bad kernel path or size is this request's 400.
        let machine: VirtualMachine
        do {
            machine = try buildMachine(configuration)
        } catch {
            throw .badRequest("Start microvm error: \(error)")
        }
        try state.withLock { (state) throws(APIError) in
            guard state.phase == .notStarted else { throw .notSupportedAfterStart }
            state.phase = .running
            state.machine = machine
            state.handoff = machine
            state.boots += 1
            state.nextMetricsFlush = Self.monotonicNow() &+ Self.metricsPeriod
        }
        try? startEvent.signal()
    }

    func pause() throws(APIError) {
        let machine = try machineAfterBoot(for: "pause")
        let start = Self.monotonicNow()
        defer {
            let elapsed = (Self.monotonicNow() &- start) / 1000
            recordLatency("pause_vm", elapsed)
            recordLatency("vmm_pause_vm", elapsed)
        }
        guard machine.pause() else {
            throw APIError(400, "pause: some vCPU did not stop within 2 s; the VM stays paused (PATCH /vm Resumed undoes it)")
        }
    }

    func resume() throws(APIError) {
        let machine = try machineAfterBoot(for: "resume")
        let start = Self.monotonicNow()
        machine.resume()
        let elapsed = (Self.monotonicNow() &- start) / 1000
        recordLatency("resume_vm", elapsed)
        recordLatency("vmm_resume_vm", elapsed)
    }

    var instanceInfo: String {
        let stateName = state.withLock { Self.stateName($0) }
        return JSONText.object([
            ("id", JSONText.string(instanceID)), ("state", JSONText.string(stateName)),
            ("vmm_version", JSONText.string(vmmVersion)), ("app_name", JSONText.string("swiftlet")),
        ])
    }

    /// Firecracker's state names: "Not started", "Running", "Paused". A VM
    /// whose run has ended (the guest powered off or rebooted, and the
    /// process is exiting or booting it again) is not running: Firecracker
    /// has no name for that moment, and "Running" would contradict the
    /// actions, which refuse it.
    static func stateName(_ state: State) -> String {
        switch state.phase {
        case .notStarted, .ended: return "Not started"
        case .running:
            guard let machine = state.machine, !machine.hasStopped else { return "Not started" }
            return machine.isPaused ? "Paused" : "Running"
        }
    }

    func metrics() throws(APIError) -> String {
        let (machine, stateName, boots, configuration) = state.withLock { ($0.machine, Self.stateName($0), $0.boots, $0.configuration) }
        var members: [(String, String)] = [
            ("id", JSONText.string(instanceID)), ("state", JSONText.string(stateName)), ("boots", "\(boots)"),
            ("vcpu_count", "\(configuration.machine.vcpuCount)"), ("mem_size_mib", "\(configuration.machine.memorySizeMiB)"),
            ("mmds", mmdsMetrics(configuration)),
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
            ("serial", JSONText.object([("bytes_out", "\(counters.serialBytesOut)"),
                                         ("bytes_dropped", "\(counters.serialBytesDropped)")])),
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
