import CKVM
import ControlAPI
import Glibc
import HostSystem
import VMM

/// Boots the VM and returns the process exit status: the guest's power-off
/// is success; reboot, crash and signals get their own statuses.
public func runVM(_ configuration: VMConfiguration) -> VMMExitStatus {
    // A console whose reader went away (a closed pipe, `| head`) must not
    // kill the VMM: writes fail with EPIPE and the output is dropped.
    signal(SIGPIPE, SIG_IGN)
    guard configureDefaultSeccompFilters() else { return .failure }
    // Opened now: the main thread's seccomp filter, installed once the guest
    // runs, allows writing to an open file but not creating one.
    var traceFile: Int32 = -1
    if let path = configuration.exitTracePath {
        do {
            traceFile = try systemCall("open \(path)") { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        } catch {
            printError("swiftlet-vmm: --trace-exits \(path): \(error)")
            return .failure
        }
    }
    defer { if traceFile >= 0 { close(traceFile) } }
    while true {
        let reason: VMExitReason
        do {
            let machine = try VirtualMachine(configuration: configuration)
            reason = try machine.run()
            // A reboot in place starts the file again: it describes the last run.
            if traceFile >= 0, let report = machine.exitTraceReport(reason: "\(reason)") {
                _ = ftruncate(traceFile, 0)
                _ = lseek(traceFile, 0, SEEK_SET)
                writeAll(traceFile, report)
            }
        } catch {
            printError("swiftlet: \(error)")
            return .failure
        }
        if let status = exitStatus(for: reason, onReboot: configuration.onReboot) { return status }
    }
}

/// Swiftlet's own filters for the threads started from now on (and the main
/// thread once the guest runs); false, with a line on stderr, if they cannot be built.
func configureDefaultSeccompFilters() -> Bool {
    do {
        SeccompFilters.configure(kinds: try DefaultSeccompFilters.programs(), mainProgramCoversChildren: true)
        return true
    } catch {
        printError("swiftlet-vmm: cannot build the seccomp filters: \(error)")
        return false
    }
}

/// The process exit status for how a run ended, or nil to boot again.
func exitStatus(for reason: VMExitReason, onReboot: RebootAction) -> VMMExitStatus? {
    switch reason {
    case .poweredOff, .stoppedByUser:
        return .poweredOff
    case let .stoppedBySignal(signal):
        printError("swiftlet: stopped by signal \(signal)")
        return .stoppedBySignal
    case .rebootRequested:
        if onReboot == .restart { return nil }
        printError("swiftlet: guest requested a reboot; exiting (use --on-reboot restart to boot again)")
        return .guestRebooted
    case let .crashed(report):
        printError("swiftlet: guest crashed\n\(report)")
        return .guestCrashed
    }
}

/// Runs with the control API: serves it from the start, boots at once or
/// when InstanceStart arrives, and exits as `runVM` does when the guest
/// powers off (an API Reboot boots again in the same process). Also the
/// runner for Firecracker's process options (logger, metrics, seccomp,
/// boot timer) with or without a socket.
public func runWithAPI(_ mode: VMMArguments.APIMode) -> VMMExitStatus {
    // One malloc arena: glibc would give the API thread an arena of its own
    // (about 0.2 MiB resident); small allocations still use per-thread caches.
    _ = ckvm_limit_malloc_arenas(1)
    // A log or metrics FIFO whose reader went away must not kill the VMM:
    // writes fail with EPIPE instead (the API's sockets use MSG_NOSIGNAL).
    signal(SIGPIPE, SIG_IGN)
    let log = APILog(settings: mode.logSettings, instanceID: mode.instanceID)
    if let path = mode.logPath {
        do {
            try log.open(path: path)
        } catch {
            printError("swiftlet-vmm: cannot open --log-path '\(path)': \(APIError.osError(error.errno))")
            return .failure
        }
    }
    log.write("Running Swiftlet v\(VMMArguments.versionNumber) (Firecracker-compatible swiftlet-vmm)")
    // Read before any thread starts: every thread installs its filter first.
    if let path = mode.seccompFilterPath {
        do {
            let bytes: [UInt8]
            do {
                bytes = try OwnedFileDescriptor.readWholeFile(path)
            } catch {
                throw VMMError.readFile(role: "seccomp filter", path: path, cause: error)
            }
            do {
                SeccompFilters.configure(try SeccompFilters.parse(bytes))
            } catch {
                throw VMMError.invalidConfiguration(field: "seccomp-filter", value: path, expected: "Firecracker's compiled filters: \(error)")
            }
        } catch {
            printError("swiftlet-vmm: \(error)")
            return .failure
        }
    } else if !mode.noSeccomp {
        guard configureDefaultSeccompFilters() else { return .failure }
    }
    var configuration = mode.configuration
    configuration.base.bootTimer = mode.bootTimer
    // Blocked before any thread starts, so the API and vCPU threads inherit
    // the mask and these signals reach the event loops through signalfd.
    let signals: SignalFD
    let controller: InstanceController
    do {
        signals = try SignalFD(signals: [SIGINT, SIGTERM, SIGHUP])
        controller = try InstanceController(instanceID: mode.instanceID, vmmVersion: VMMArguments.versionNumber,
                                            configuration: configuration, log: log)
    } catch {
        printError("swiftlet-vmm: \(error)")
        return .failure
    }
    do throws(APIError) {
        if let path = mode.metricsPath { try controller.configureMetrics(path: path) }
        try controller.applyFileSettings()
    } catch {
        printError("swiftlet-vmm: \(error.message)")
        return .failure
    }
    let server: APIServer?
    do {
        let limits = HTTPRequestParser.Limits(maximumBodyBytes: mode.maximumPayloadSize)
        server = try mode.socketPath.map { (path) throws(APIServerError) in try APIServer(path: path, controller: controller, limits: limits) }
    } catch {
        printError("swiftlet-vmm: \(error)")
        log.error("\(error)")
        return .failure
    }
    if let path = mode.socketPath { log.write("API server listening on \(path)") }
    controller.reportStartTimes(startMicroseconds: mode.startTimeMicroseconds, startCPUMicroseconds: mode.startTimeCPUMicroseconds,
                                parentCPUMicroseconds: mode.parentCPUTimeMicroseconds)
    let status = serve(mode, controller: controller, signals: signals)
    controller.finish()
    server?.shutdown()
    if status == .poweredOff {
        log.write("Swiftlet exiting successfully. exit_code=0")
    } else {
        log.error("Swiftlet exiting with error. exit_code=\(status.rawValue)")
    }
    return status
}

/// Boots (at once or on InstanceStart) and runs until the process should exit.
private func serve(_ mode: VMMArguments.APIMode, controller: InstanceController, signals: SignalFD) -> VMMExitStatus {
    var machine: VirtualMachine
    do {
        if mode.bootsAtOnce {
            machine = try controller.startNow()
        } else {
            switch controller.waitForStart(signals: signals) {
            case let .started(started):
                machine = started
            case let .signalled(signal):
                printError("swiftlet-vmm: stopped by signal \(signal) before the VM started")
                return .stoppedBySignal
            }
        }
        while true {
            let reason = try machine.run()
            let apiReboot = controller.runEnded(reason)
            if !apiReboot, let status = exitStatus(for: reason, onReboot: mode.configuration.base.onReboot) { return status }
            machine = try controller.restart()
        }
    } catch {
        printError("swiftlet: \(error)")
        return .failure
    }
}

/// Writes a line to stderr, unbuffered.
public func printError(_ message: String) {
    writeAll(STDERR_FILENO, message + "\n")
}

func writeAll(_ descriptor: Int32, _ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}

/// The `swiftlet-vmm` program: parse, run, exit with the status.
public enum SwiftletVMMMain {
    public static func main(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
        // The clock `--trace-exits` measures the start-up phase from.
        _ = ProcessClock.start
        let action: VMMArguments.Action
        do {
            action = try VMMArguments.parse(arguments)
        } catch {
            printError("swiftlet-vmm: \(error)")
            exit(VMMExitStatus.failure.rawValue)
        }
        switch action {
        case .help:
            writeAll(STDOUT_FILENO, VMMArguments.help)
            exit(0)
        case .version:
            writeAll(STDOUT_FILENO, VMMArguments.version + "\n")
            exit(0)
        case let .run(configuration):
            exit(runVM(configuration).rawValue)
        case let .serve(mode):
            exit(runWithAPI(mode).rawValue)
        }
    }
}
