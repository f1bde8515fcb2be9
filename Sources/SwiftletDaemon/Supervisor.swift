import Foundation
import Logging
import Synchronization
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// Where a VM's run-time files live: `<state>/vms/<name>/`.
public struct RunDirectory: Sendable {
    public let path: String
    public var pidFile: String { path + "/vmm.pid" }
    public var apiSocket: String { path + "/api.sock" }
    /// The VMM's hybrid vsock socket: the guest agent's way in (docs/agent.md).
    public var vsockSocket: String { path + "/vsock.sock" }
    public var consoleLog: String { path + "/console.log" }
    public var consoleInput: String { path + "/console.in" }
    public var vmmLog: String { path + "/vmm.log" }
    /// The taps swiftletd made for the VM's network NICs (`NETWORK TAP` lines).
    public var tapsFile: String { path + "/taps" }
}

public struct SupervisorConfiguration: Sendable {
    public var stateDirectory: String
    public var vmmBinary: String
    /// Rotate console.log (to console.log.1) past this size.
    public var consoleLogLimit: Int = 1 << 20
    /// How long destroy waits after SIGTERM before SIGKILL.
    public var stopGrace: Double = 5
    /// Where kernels, initrds and disks may come from.
    public var images: ImagePolicy
    /// Run each VMM through swiftlet-jailer (nil: `--no-jail`).
    public var jail: JailConfiguration?
    /// The QEMU driver's binary and UEFI firmware folder (docs/drivers.md).
    public var qemuBinary = QEMUDriver.defaultBinary
    public var firmwareDirectory = QEMUDriver.defaultFirmwareDirectory
    public init(stateDirectory: String, vmmBinary: String, images: ImagePolicy) {
        self.stateDirectory = stateDirectory
        self.vmmBinary = vmmBinary
        self.images = images
    }
}

/// Runs one hypervisor process per running VM (swiftlet-vmm or QEMU, by
/// the definition's driver) and keeps each VM's state in step with its
/// process: a waiter thread per child (or a /proc watcher for VMs
/// re-adopted after a daemon restart) turns the exit into shut off or
/// crashed with the reason.
public final class Supervisor: Sendable {
    public enum StopRequest: Sendable { case destroy, shutdown, reboot }

    struct Runtime: Sendable {
        var state: VMState = .shutOff
        var reason: String?
        var pid: pid_t?
        var startedAt: Double?
        var stopRequest: StopRequest?
        var adopted = false
        var cgroup: String?
        var controlAPI = false
        /// The driver running the VM (`hypervisor:`).
        var hypervisor = "swiftlet"
        /// Why the VM is about to stop, as its driver heard it (QMP events).
        var exitNote: ExitNote?
        /// An undefine is deleting the definition: no start may begin.
        var undefining = false
        /// A snapshot is being taken: no second one, no pause or resume meanwhile.
        var snapshotting = false
        /// What this run was started with (nil for a re-adopted VMM).
        var definition: VMDefinition?
    }

    public let configuration: SupervisorConfiguration
    let store: DefinitionStore
    let cgroups: CgroupManager
    /// Networks and the taps of VMs on them (nil: NICs must name their own taps).
    public let networks: NetworkManager?
    let logger: Logger
    /// The Swiftlet driver (swiftlet-vmm) and the QEMU driver.
    let drivers: DriverRegistry
    let swiftletDriver: SwiftletDriver
    /// Whether this swiftlet-vmm serves the control API (`--api-sock`).
    public var vmmHasControlAPI: Bool { swiftletDriver.hasControl }
    /// Whether its `--disk` takes `format=raw|qcow2` (else disks are raw and unnamed formats are probed by nobody).
    public var vmmHasDiskFormats: Bool { swiftletDriver.hasDiskFormats }
    /// Storage pools and volumes (nil: disks name paths only).
    public let storage: StorageManager?
    let runtimes = Mutex<[String: Runtime]>([:])
    let subscribers = Mutex<[UUID: AsyncStream<VMEvent>.Continuation]>([:])
    let counters = Mutex<[String: Int]>([:])

    public init(configuration: SupervisorConfiguration, store: DefinitionStore, cgroups: CgroupManager, networks: NetworkManager? = nil,
                storage: StorageManager? = nil, logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.cgroups = cgroups
        self.networks = networks
        self.storage = storage
        self.logger = logger
        swiftletDriver = SwiftletDriver(binary: configuration.vmmBinary)
        drivers = DriverRegistry(drivers: [swiftletDriver, QEMUDriver(binary: configuration.qemuBinary, firmwareDirectory: configuration.firmwareDirectory)])
        if !swiftletDriver.hasControl {
            logger.warning("swiftlet-vmm has no control API (--api-sock): pause/resume use SIGSTOP/SIGCONT, shutdown stops the VM with SIGTERM, no VMM counters", metadata: ["vmm": "\(configuration.vmmBinary)"])
        }
    }

    /// The drivers found and their versions (`GET /v1/version`).
    public func driverInfo() -> [DriverInfo] { drivers.info() }

    /// The driver running (or last started for) the VM.
    func driver(ofRunning name: String) -> any HypervisorDriver {
        drivers.driver(named: runtime(name).hypervisor) ?? swiftletDriver
    }

    public func runDirectory(_ name: String) -> RunDirectory {
        RunDirectory(path: configuration.stateDirectory + "/vms/" + name)
    }

    // MARK: state and events

    func runtime(_ name: String) -> Runtime { runtimes.withLock { $0[name] ?? Runtime() } }

    public func info(for row: DefinitionStore.Row) -> VMInfo {
        let name = row.definition.name
        var runtime = runtime(name)
        if runtime.state == .shutOff && runtime.pid == nil && runtime.reason == nil, let last = row.lastState {
            runtime.state = last == .crashed ? .crashed : .shutOff
            runtime.reason = row.lastReason
        }
        let directory = runDirectory(name)
        return VMInfo(definition: row.definition, state: runtime.state, reason: runtime.reason, pid: runtime.pid,
                      startedAt: runtime.startedAt, controlAPI: runtime.controlAPI, consoleLog: directory.consoleLog,
                      consoleInput: runtime.pid != nil && row.definition.console == "log" ? directory.consoleInput : nil,
                      cgroup: runtime.cgroup)
    }

    func publish(_ name: String, _ state: VMState, _ reason: String?) {
        let event = VMEvent(name: name, state: state, reason: reason, time: Date().timeIntervalSince1970)
        logger.info("state changed", metadata: ["vm": "\(name)", "state": "\(state.rawValue)", "reason": "\(reason ?? "")"])
        for continuation in subscribers.withLock({ Array($0.values) }) { continuation.yield(event) }
    }

    public func events() -> AsyncStream<VMEvent> {
        let id = UUID()
        let (stream, continuation) = AsyncStream<VMEvent>.makeStream(bufferingPolicy: .bufferingNewest(1000))
        continuation.onTermination = { [weak self] _ in _ = self?.subscribers.withLock { $0.removeValue(forKey: id) } }
        subscribers.withLock { $0[id] = continuation }
        return stream
    }

    /// Ends every event stream (daemon shutdown), so no request keeps the server up.
    public func finishEventStreams() {
        for continuation in subscribers.withLock({ Array($0.values) }) { continuation.finish() }
    }

    func count(_ key: String) { counters.withLock { $0[key, default: 0] += 1 } }
    public func counterValues() -> [String: Int] { counters.withLock { $0 } }

    /// Running, or a start is under way (its VMM may be spawned any moment).
    public func isActive(_ name: String) -> Bool {
        let runtime = runtime(name)
        return runtime.pid != nil || runtime.state == .starting
    }

    /// Claims the VM for undefine: refused while it runs or starts, and no
    /// start begins until `finishUndefine`. Serializes the two, so an
    /// undefine can never leave a VMM that no definition tracks.
    public func beginUndefine(_ name: String) throws(DaemonError) {
        let refusal = runtimes.withLock { table -> DaemonError? in
            var runtime = table[name] ?? Runtime()
            if runtime.state == .starting {
                return .conflict("VM '\(name)' is starting; `swiftlet destroy \(name)` once it runs, then undefine it")
            }
            if runtime.pid != nil {
                return .conflict("VM '\(name)' is running; `swiftlet destroy \(name)` first, then undefine it")
            }
            if runtime.undefining { return .conflict("VM '\(name)' is already being undefined") }
            runtime.undefining = true
            table[name] = runtime
            return nil
        }
        if let refusal { throw refusal }
    }

    /// Ends an undefine: `deleted` forgets the VM's run state and files,
    /// otherwise (the database refused) the VM may start again.
    public func finishUndefine(_ name: String, deleted: Bool) {
        if deleted {
            forget(name)
        } else {
            runtimes.withLock { $0[name]?.undefining = false }
        }
    }

    // MARK: start

    /// The files a restore hands to `PUT /snapshot/load` (host paths).
    struct SnapshotFiles: Sendable {
        var state: String
        var memory: String
    }

    /// Starts the VM: boots its kernel, or, `restoring` a snapshot, loads it
    /// into a fresh VMM (`PUT /snapshot/load`, resumed) instead.
    public func start(_ definition: VMDefinition) throws(DaemonError) { try start(definition, restoring: nil) }

    func start(_ definition: VMDefinition, restoring snapshot: SnapshotFiles?) throws(DaemonError) {
        let name = definition.name
        let claimed = runtimes.withLock { table -> Bool in
            var runtime = table[name] ?? Runtime()
            guard runtime.pid == nil, runtime.state != .starting, !runtime.undefining else { return false }
            runtime.state = .starting
            runtime.reason = nil
            runtime.stopRequest = nil
            table[name] = runtime
            return true
        }
        guard claimed else {
            if runtime(name).undefining { throw .conflict("VM '\(name)' is being undefined") }
            throw .conflict("VM '\(name)' is already running; `swiftlet destroy \(name)` stops it")
        }
        // An undefine that finished between the caller reading the definition
        // and this claim has deleted it: nothing may start then.
        guard (try? store.get(name)) != nil else {
            runtimes.withLock { table in
                if table[name]?.state == .starting, table[name]?.pid == nil { table[name]?.state = .shutOff }
            }
            throw .noSuchVM(name)
        }
        do {
            try launch(definition, restoring: snapshot)
        } catch {
            // Taps made for this start go with it (when the VMM ran, its exit removed them already).
            if runtime(name).pid == nil { networks?.detach(name, tapsFile: runDirectory(name).tapsFile) }
            runtimes.withLock { table in
                table[name]?.state = .shutOff
                table[name]?.reason = "start failed: \(error.description)"
            }
            throw error
        }
    }

    func launch(_ stored: VMDefinition, restoring snapshot: SnapshotFiles?) throws(DaemonError) {
        let name = stored.name
        let driver = try drivers.driver(for: stored)
        // A missing binary is one clear error at start, never at define.
        if let why = driver.unavailableReason() { throw .unavailable("cannot start '\(name)': \(why)") }
        if snapshot != nil && !driver.supportsSnapshots {
            throw .conflict("cannot restore '\(name)': the \(driver.name) driver at \(driver.binary) cannot load a snapshot")
        }
        // Checked again now (a link may have changed since define); the VMM gets the resolved paths.
        // Volumes become their paths and recorded formats; other disks default to raw.
        var withDisks = stored
        if let storage {
            withDisks = try storage.resolveDisks(stored)
        } else if stored.disks.contains(where: { $0.volume != nil }) {
            throw .unavailable("cannot start '\(name)': this swiftletd has no storage pools")
        }
        let checked: VMDefinition
        do { checked = try configuration.images.check(withDisks, mustExist: true) } catch {
            throw .badRequest("cannot start '\(name)': \(error.description)")
        }
        var files: [(String, String)] = []
        if let kernel = checked.kernel { files.append(("kernel", kernel)) }
        if let initrd = checked.initrd { files.append(("initrd", initrd)) }
        files += checked.disks.enumerated().map { ("disks[\($0.offset)].path", $0.element.path ?? "") }
        if let snapshot { files += [("snapshot state file", snapshot.state), ("snapshot memory file", snapshot.memory)] }
        for (field, path) in files where access(path, R_OK) != 0 {
            let why = errno == ENOENT ? "does not exist" : String(cString: strerror(errno))
            throw .badRequest("cannot start '\(name)': its \(field) '\(path)' \(why); fix the path with `swiftlet edit \(name)`")
        }
        let directory = runDirectory(name)
        do {
            try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: true)
        } catch {
            throw .internal("cannot prepare \(directory.path): \(error)")
        }
        try NetworkManager.checkUserTaps(checked)
        // Each NIC on a network gets a fresh tap on its bridge: from here the definition names it.
        let definition: VMDefinition
        if checked.nics.contains(where: { $0.network != nil }) {
            guard let networks else { throw .unavailable("cannot start '\(name)': this swiftletd runs no networks; name a tap instead") }
            definition = try networks.attach(checked, tapsFile: directory.tapsFile, multiQueue: driver.multiQueueTaps)
        } else {
            definition = checked
        }
        do {
            driver.removeRunFiles(directory)
            if access(directory.consoleInput, F_OK) != 0 && mkfifo(directory.consoleInput, 0o600) != 0 {
                throw HostProcess.SpawnFailure(step: "creating \(directory.consoleInput)", code: errno)
            }
            rotate(directory.consoleLog, above: 0, keepIfSmallerThan: configuration.consoleLogLimit)
        } catch {
            throw .internal("cannot prepare \(directory.path): \(error)")
        }

        // Jailed, swiftlet-vmm sees its files at the paths the jail gives them;
        // QEMU jails itself in an empty folder after opening them.
        let jail = configuration.jail.flatMap { driver.usesJailer ? VMJail(configuration: $0, name: name, vmmBinary: driver.binary) : nil }
        var chrootDirectory: String?
        var inJail: [String: String] = [:]
        if let jail {
            do {
                inJail = try jail.prepare(kernel: definition.kernel ?? "", initrd: definition.initrd, disks: definition.disks.map { $0.path ?? "" },
                                          backing: definition.disks.filter { $0.format == "qcow2" }.flatMap { StorageFormats.backingChain(of: $0.path ?? "") },
                                          snapshot: snapshot.map { ($0.state, $0.memory) })
                // The daemon reaches the API socket the VMM creates in its jail through the usual path.
                try FileManager.default.createSymbolicLink(atPath: directory.apiSocket, withDestinationPath: jail.root + "/api.sock")
                try FileManager.default.createSymbolicLink(atPath: directory.vsockSocket, withDestinationPath: jail.root + "/vsock.sock")
            } catch {
                jail.removeJail()
                throw .badRequest("cannot start '\(name)' jailed: \(error)")
            }
        } else if let settings = configuration.jail {
            let root = Self.selfJailRoot(settings, driver: driver.name, vm: name)
            do { try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true) } catch {
                throw .internal("cannot prepare the jail folder \(root): \(error)")
            }
            chrootDirectory = root
        }
        let jailPaths = inJail
        let path: @Sendable (String) -> String = { jailPaths[$0] ?? $0 }
        let arguments = try driver.arguments(LaunchContext(definition: definition, directory: directory, jail: configuration.jail,
                                                           chrootDirectory: chrootDirectory, restoring: snapshot != nil, path: path))

        let pid: pid_t
        do {
            let binary = jail?.configuration.jailerBinary ?? driver.binary
            pid = try HostProcess.spawn(binary: binary, arguments: jail?.jailerArguments(vmmArguments: arguments) ?? arguments,
                                        stdinPath: directory.consoleInput,
                                        stdoutPath: directory.consoleLog, stderrPath: directory.vmmLog)
        } catch {
            throw .internal("cannot start '\(name)': \(error)")
        }
        // The pid file comes first: a daemon that dies from here on finds the
        // VMM through it (and, should it die before even this, through /proc:
        // `adoptRunningVMs`). A VMM whose pid cannot be recorded is stopped.
        do {
            try HostProcess.writePidFile(pid, to: directory.pidFile)
        } catch {
            kill(pid, SIGKILL)
            _ = HostProcess.waitForExit(pid)
            throw .internal("cannot start '\(name)': writing \(directory.pidFile): \(error); the VMM was stopped")
        }
        count("starts")
        let startedAt = Date().timeIntervalSince1970
        var cgroup: String?
        do {
            cgroup = try cgroups.place(pid: pid, name: name, cpuPercent: definition.limits?.cpuPercent, memoryMiB: definition.limits?.memoryMiB)
        } catch {
            logger.warning("cgroup limits not applied", metadata: ["vm": "\(name)", "error": "\(error)"])
        }
        let tracked = runtimes.withLock { table -> Bool in
            // The start's claim is gone only if the VM was forgotten meanwhile.
            guard table[name]?.state == .starting else { return false }
            table[name]?.pid = pid
            table[name]?.startedAt = startedAt
            table[name]?.cgroup = cgroup
            table[name]?.controlAPI = driver.hasControl
            table[name]?.hypervisor = driver.name
            table[name]?.exitNote = nil
            table[name]?.adopted = false
            table[name]?.definition = definition
            return true
        }
        guard tracked else {
            kill(pid, SIGKILL)
            _ = HostProcess.waitForExit(pid)
            unlink(directory.pidFile)
            cgroups.remove(name: name)
            throw .conflict("VM '\(name)' was undefined while it started; its VMM was stopped")
        }
        let waiter = Thread { [self] in
            let status = HostProcess.waitForExit(pid)
            exited(name: name, pid: pid, status: status)
        }
        waiter.stackSize = 64 * 1024
        waiter.start()
        driver.watch(name: name, pid: pid, directory: directory, note: noteRecorder(name: name, pid: pid))

        if let snapshot {
            try load(into: name, pid: pid, paths: (path(snapshot.state), path(snapshot.memory)), definition: definition)
        }
        // Running once the control channel reports it (or, without one, once
        // the process has survived its argument checks for a moment).
        let deadline = Date().addingTimeInterval(driver.hasControl ? 10 : 0.05)
        while Date() < deadline {
            if runtime(name).pid != pid { break }
            if driver.hasControl, let state = try? driver.control(directory, timeout: 1).state(), state != .notStarted { break }
            usleep(driver.hasControl ? 2_000 : 10_000)
        }
        let became = runtimes.withLock { table -> Bool in
            guard table[name]?.pid == pid, table[name]?.state == .starting else { return false }
            table[name]?.state = .running
            return true
        }
        if became {
            publish(name, .running, nil)
        } else {
            let after = runtime(name)
            // The guest ran and crashed before "Running" was seen (the VMM
            // reports a run that has ended as "Not started"): it started.
            if after.state == .crashed, after.reason?.hasPrefix("the guest crashed") == true { return }
            if after.state == .crashed || after.state == .shutOff, after.pid == nil {
                throw .badRequest("'\(name)' stopped right after starting: \(after.reason ?? "no reason reported")")
            }
        }
    }

    /// Where a driver that jails itself (QEMU's `-chroot`) is confined: an empty folder.
    static func selfJailRoot(_ jail: JailConfiguration, driver: String, vm: String) -> String {
        jail.chrootBase + "/" + driver + "/" + vm
    }

    /// Records a driver's word on why a run is ending, for `exited`.
    func noteRecorder(name: String, pid: pid_t) -> @Sendable (ExitNote) -> Void {
        { [weak self] note in
            self?.runtimes.withLock { table in
                guard table[name]?.pid == pid else { return }
                // The first crash note stands; a later SHUTDOWN (the quit that follows it) does not replace it.
                if table[name]?.exitNote?.crashed != true { table[name]?.exitNote = note }
            }
        }
    }

    /// The child ended (status from waitpid), or an adopted VMM disappeared (status nil).
    func exited(name: String, pid: pid_t, status: Int32?) {
        let directory = runDirectory(name)
        let stderrTail = Self.lastLines(of: directory.vmmLog, count: 3)
        let (request, note) = runtimes.withLock { $0[name]?.pid == pid ? ($0[name]?.stopRequest, $0[name]?.exitNote) : (nil, nil) }
        let driver = driver(ofRunning: name)
        let (state, reason) = driver.outcome(status: status, request: request, stderrTail: stderrTail, note: note)
        let current = runtimes.withLock { table -> Bool in
            guard table[name]?.pid == pid else { return false }
            table[name]?.pid = nil
            table[name]?.state = state
            table[name]?.reason = reason
            table[name]?.stopRequest = nil
            table[name]?.exitNote = nil
            table[name]?.adopted = false
            return true
        }
        guard current else { return }
        if state == .crashed { count("crashes") }
        unlink(directory.pidFile)
        driver.removeRunFiles(directory)
        networks?.detach(name, tapsFile: directory.tapsFile)
        cgroups.remove(name: name)
        if let jail = configuration.jail {
            if driver.usesJailer {
                VMJail(configuration: jail, name: name, vmmBinary: driver.binary).removeJail()
            } else {
                rmdir(Self.selfJailRoot(jail, driver: driver.name, vm: name))
            }
        }
        try? store.recordOutcome(name, state: state, reason: reason)
        publish(name, state, reason)
        if request == .reboot, let row = try? store.get(name) {
            do { try start(row.definition) } catch {
                logger.error("restart after reboot failed", metadata: ["vm": "\(name)", "error": "\(error)"])
            }
        }
    }

    static func lastLines(of path: String, count: Int) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: size > 4096 ? size - 4096 : 0)
        let text = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        return text.split(whereSeparator: \.isNewline).suffix(count).joined(separator: " | ")
    }

    /// Moves `path` to `path.1` when it has reached `limit` bytes.
    func rotate(_ path: String, above: Int, keepIfSmallerThan limit: Int) {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
              let size = attributes[.size] as? Int, size >= limit else { return }
        unlink(path + ".1")
        rename(path, path + ".1")
    }

    /// Rotation while the VMM writes: copy to `.1`, then truncate in place
    /// (the VMM's descriptor is O_APPEND, so it goes on at the new end).
    public func rotateConsoleLogs() {
        let running = runtimes.withLock { $0.filter { $0.value.pid != nil }.map(\.key) }
        for name in running {
            let path = runDirectory(name).consoleLog
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                  let size = attributes[.size] as? Int, size >= configuration.consoleLogLimit else { continue }
            unlink(path + ".1")
            if (try? FileManager.default.copyItem(atPath: path, toPath: path + ".1")) != nil {
                truncate(path, 0)
                logger.info("console log rotated", metadata: ["vm": "\(name)", "bytes": "\(size)"])
            }
        }
    }

    // MARK: stop, pause

    func activePid(_ name: String) throws(DaemonError) -> (pid_t, Runtime) {
        let runtime = runtime(name)
        guard let pid = runtime.pid else {
            throw .conflict("VM '\(name)' is not running (\(runtime.state.rawValue)); `swiftlet start \(name)` starts it")
        }
        return (pid, runtime)
    }

    /// Stops the VMM at once: SIGTERM, then SIGKILL after the grace period; waits for the exit.
    public func destroy(_ name: String, as request: StopRequest = .destroy) throws(DaemonError) {
        let (pid, runtime) = try activePid(name)
        runtimes.withLock { $0[name]?.stopRequest = request }
        if runtime.state == .paused && !runtime.controlAPI { kill(pid, SIGCONT) }
        kill(pid, SIGTERM)
        if runtime.state == .paused { kill(pid, SIGCONT) }
        if !waitUntilStopped(name, pid: pid, seconds: configuration.stopGrace) {
            kill(pid, SIGKILL)
            _ = waitUntilStopped(name, pid: pid, seconds: 5)
        }
    }

    func waitUntilStopped(_ name: String, pid: pid_t, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if runtime(name).pid != pid { return true }
            usleep(5_000)
        }
        return false
    }

    /// Graceful: the ACPI power button through the control API. `wait`
    /// seconds for the guest to power off; `force` destroys it after that.
    public func shutdown(_ name: String, wait: Double, force: Bool) throws(DaemonError) {
        let (pid, runtime) = try activePid(name)
        guard runtime.controlAPI else {
            try destroy(name, as: .shutdown)
            return
        }
        runtimes.withLock { table in
            table[name]?.stopRequest = .shutdown
            table[name]?.state = .shuttingDown
        }
        publish(name, .shuttingDown, nil)
        do { try control(name).powerButton() } catch {
            runtimes.withLock { if $0[name]?.pid == pid { $0[name]?.state = runtime.state } }
            throw controlFailure(name, pid: pid, doing: "shut down", error)
        }
        if wait > 0 && !waitUntilStopped(name, pid: pid, seconds: wait) && force {
            try? destroy(name)
        }
    }

    /// Why a control-API call failed, for the caller: the VM ended meanwhile
    /// (a guest powering off during a reboot, pause or shutdown) or the VMM
    /// refused in its current state are conflicts (409), not server errors.
    func controlFailure(_ name: String, pid: pid_t, doing verb: String, _ error: any Error) -> DaemonError {
        // The VMM closing its socket as it exits: give the waiter a moment to see the exit.
        if waitUntilStopped(name, pid: pid, seconds: 2) || !HostProcess.isAlive(pid) {
            let now = runtime(name)
            return .conflict("VM '\(name)' ended while it was being \(verb); it is \(now.state.rawValue)\(now.reason.map { " (\($0))" } ?? "")")
        }
        if let refusal = error as? any ControlRefusal, refusal.isRefusal {
            return .conflict("VM '\(name)' cannot be \(verb) now: \(error)")
        }
        return .internal("VM '\(name)' could not be \(verb): the VMM API failed: \(error)")
    }

    /// The running VM's control channel, through its driver.
    func control(_ name: String, timeout: Double = 5) -> any VMControl {
        driver(ofRunning: name).control(runDirectory(name), timeout: timeout)
    }

    public func reboot(_ name: String) throws(DaemonError) {
        let (pid, runtime) = try activePid(name)
        if runtime.controlAPI {
            do { try control(name).reset() } catch {
                throw controlFailure(name, pid: pid, doing: "rebooted", error)
            }
            return
        }
        // Without the control API: a hard reset (stop, start again).
        try destroy(name, as: .reboot)
    }

    public func pause(_ name: String) throws(DaemonError) {
        let (pid, runtime) = try activePid(name)
        if runtime.snapshotting { throw .conflict("VM '\(name)' is being snapshotted; pause it once that is done") }
        guard runtime.state == .running else { throw .conflict("VM '\(name)' is \(runtime.state.rawValue), not running") }
        if runtime.controlAPI {
            do { try control(name).pause() } catch { throw controlFailure(name, pid: pid, doing: "paused", error) }
        } else {
            kill(pid, SIGSTOP)
        }
        runtimes.withLock { if $0[name]?.pid == pid { $0[name]?.state = .paused } }
        publish(name, .paused, nil)
    }

    public func resume(_ name: String) throws(DaemonError) {
        let (pid, runtime) = try activePid(name)
        if runtime.snapshotting { throw .conflict("VM '\(name)' is being snapshotted; resume it once that is done") }
        guard runtime.state == .paused else { throw .conflict("VM '\(name)' is \(runtime.state.rawValue), not paused") }
        if runtime.controlAPI {
            do { try control(name).resume() } catch { throw controlFailure(name, pid: pid, doing: "resumed", error) }
        } else {
            kill(pid, SIGCONT)
        }
        runtimes.withLock { if $0[name]?.pid == pid { $0[name]?.state = .running } }
        publish(name, .running, nil)
    }

    public func stats(_ name: String) -> VMStats {
        let runtime = runtime(name)
        var stats = VMStats(name: name, state: runtime.state, pid: runtime.pid)
        if let pid = runtime.pid, let usage = HostProcess.usage(pid) {
            stats.cpuSeconds = usage.cpuSeconds
            stats.rssBytes = usage.rssBytes
            stats.threads = usage.threads
            stats.uptimeSeconds = runtime.startedAt.map { Date().timeIntervalSince1970 - $0 }
            if runtime.controlAPI {
                stats.vmmMetrics = try? control(name, timeout: 2).metrics()
            }
        }
        return stats
    }

    // MARK: daemon start: re-adoption and autostart

    /// Finds VMMs left running by an earlier daemon (pid file, verified
    /// through /proc) and watches them; clears stale pid files.
    public func adoptRunningVMs() {
        guard let rows = try? store.all() else { return }
        let defined = Set(rows.map(\.definition.name))
        // VMMs this state folder started whose pid file is missing (the daemon
        // died between spawn and writing it): adopt them when their VM is
        // still defined (by writing the pid file now), stop them otherwise.
        let found = HostProcess.findVMMs(consoleLogsUnder: configuration.stateDirectory + "/vms/")
        for (pid, name) in found.sorted(by: { $0.key < $1.key }) {
            if defined.contains(name) {
                let pidFile = runDirectory(name).pidFile
                let recorded = (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
                if recorded == pid { continue }
                if let recorded, HostProcess.isAlive(recorded), HostProcess.isVMM(recorded, consoleLog: runDirectory(name).consoleLog) {
                    // Two VMMs on one VM's console: keep the recorded one.
                    logger.warning("stopping a second VMM of a VM", metadata: ["vm": "\(name)", "pid": "\(pid)"])
                    kill(pid, SIGKILL)
                    continue
                }
                logger.warning("found a VMM without a pid file; adopting it", metadata: ["vm": "\(name)", "pid": "\(pid)"])
                do { try HostProcess.writePidFile(pid, to: pidFile) } catch {
                    logger.error("cannot record an orphaned VMM; stopping it", metadata: ["vm": "\(name)", "pid": "\(pid)", "error": "\(error)"])
                    kill(pid, SIGKILL)
                }
            } else {
                logger.warning("stopping a VMM whose VM is no longer defined", metadata: ["vm": "\(name)", "pid": "\(pid)"])
                kill(pid, SIGKILL)
            }
        }
        for row in rows {
            let name = row.definition.name
            let directory = runDirectory(name)
            guard let text = try? String(contentsOfFile: directory.pidFile, encoding: .utf8),
                  let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { continue }
            guard HostProcess.isAlive(pid), HostProcess.isVMM(pid, consoleLog: directory.consoleLog) else {
                logger.info("stale pid file removed", metadata: ["vm": "\(name)", "pid": "\(pid)"])
                unlink(directory.pidFile)
                continue
            }
            // The process says which driver runs it (the definition may have been edited since).
            let executable = HostProcess.executableName(pid) ?? ""
            let driver = drivers.drivers.first { $0.isOwnExecutable(executable) } ?? swiftletDriver
            // swiftlet-vmm without a control API has no socket; QEMU always has QMP.
            let hasAPI = driver.hasControl && (driver.name != swiftletDriver.name || access(directory.apiSocket, F_OK) == 0)
            var state = VMState.running
            if hasAPI, let reported = try? driver.control(directory, timeout: 2).state() {
                if reported == .paused { state = .paused }
            } else if HostProcess.usage(pid)?.state == "T" {
                state = .paused
            }
            let startedAt = (try? FileManager.default.attributesOfItem(atPath: directory.pidFile)[.modificationDate] as? Date)?.timeIntervalSince1970
            runtimes.withLock { table in
                table[name] = Runtime(state: state, reason: "re-adopted after a swiftletd restart", pid: pid, startedAt: startedAt,
                                      adopted: true, cgroup: cgroups.groupDescription(name: name), controlAPI: hasAPI, hypervisor: driver.name)
            }
            // QMP's events again (why a re-adopted QEMU ends).
            driver.watch(name: name, pid: pid, directory: directory, note: noteRecorder(name: name, pid: pid))
            logger.info("re-adopted running VM", metadata: ["vm": "\(name)", "pid": "\(pid)", "state": "\(state.rawValue)"])
            let consoleLog = directory.consoleLog
            let watcher = Thread { [self] in
                while HostProcess.isAlive(pid) && HostProcess.isVMM(pid, consoleLog: consoleLog) {
                    usleep(100_000)
                    if runtime(name).pid != pid { return }
                }
                exited(name: name, pid: pid, status: nil)
            }
            watcher.stackSize = 64 * 1024
            watcher.start()
        }
    }

    public func autostart() {
        guard let rows = try? store.all() else { return }
        for row in rows where row.definition.autostart && !isActive(row.definition.name) {
            do {
                try start(row.definition)
                logger.info("autostarted", metadata: ["vm": "\(row.definition.name)"])
            } catch {
                logger.error("autostart failed", metadata: ["vm": "\(row.definition.name)", "error": "\(error)"])
            }
        }
    }

    /// Forgets a VM's run state and files (undefine).
    public func forget(_ name: String) {
        runtimes.withLock { _ = $0.removeValue(forKey: name) }
        try? FileManager.default.removeItem(atPath: runDirectory(name).path)
    }

    public func allRuntimes() -> [String: (state: VMState, pid: pid_t?)] {
        runtimes.withLock { $0.mapValues { ($0.state, $0.pid) } }
    }
}
