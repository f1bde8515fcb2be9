import Foundation
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// One way of running a VM: a hypervisor binary, how a definition becomes
/// its command line, and how the running VM is controlled and watched. The
/// Supervisor does everything else the same way for every driver: the run
/// folder, console log and input, pid file, cgroup, taps, waiting for the
/// exit, states and events. See docs/drivers.md.
protocol HypervisorDriver: Sendable {
    /// A definition's `hypervisor:` value.
    var name: String { get }
    /// The program started per VM.
    var binary: String { get }
    /// Whether the VM has a control channel (pause, power button, state);
    /// without one the Supervisor uses signals.
    var hasControl: Bool { get }
    /// Whether the VM's files go through swiftlet-jailer's chroot when jailed.
    var usesJailer: Bool { get }
    /// Full snapshots and restores (`PUT /snapshot/create|load`).
    var supportsSnapshots: Bool { get }
    /// A vsock device for the guest agent.
    var supportsAgent: Bool { get }
    /// Whether the VM's network taps are all made multi-queue; when not,
    /// only those of NICs with `queues` > 1 are.
    var multiQueueTaps: Bool { get }

    /// Why this driver cannot start VMs now (its binary is missing), or nil.
    func unavailableReason() -> String?
    /// The binary's version, nil when it cannot be asked.
    func version() -> String?
    /// Define-time checks of what this driver supports, one sentence per refusal.
    func validate(_ definition: VMDefinition) throws(DaemonError)
    /// The command line for one run of `launch.definition`.
    func arguments(_ launch: LaunchContext) throws(DaemonError) -> [String]
    /// The VM's control channel (only when `hasControl`).
    func control(_ directory: RunDirectory, timeout: Double) -> any VMControl
    /// Starts following what the running VM reports about itself (QEMU's
    /// QMP events); `note` records why it is about to stop.
    func watch(name: String, pid: pid_t, directory: RunDirectory, note: @escaping @Sendable (ExitNote) -> Void)
    /// The state and reason a run ended with.
    func outcome(status: Int32?, request: Supervisor.StopRequest?, stderrTail: String, note: ExitNote?) -> (VMState, String)
    /// Run-time files of a run that has ended (sockets).
    func removeRunFiles(_ directory: RunDirectory)
    /// Whether an executable (its base name) is this driver's, for finding
    /// VMs left running by an earlier daemon.
    func isOwnExecutable(_ baseName: String) -> Bool
}

/// What a driver gets to build one run's command line from.
struct LaunchContext {
    /// Resolved: disks have paths and formats, network NICs their taps.
    var definition: VMDefinition
    var directory: RunDirectory
    /// swiftletd's jail settings, when VMs run jailed.
    var jail: JailConfiguration?
    /// The chroot's root for drivers that jail themselves (QEMU's `-chroot`).
    var chrootDirectory: String?
    /// A snapshot is restored (the VMM waits for `PUT /snapshot/load`).
    var restoring: Bool
    /// A host path as the hypervisor sees it (inside swiftlet-jailer's chroot).
    var path: @Sendable (String) -> String
}

/// Why a running VM is about to stop, as it told its driver (QMP's
/// SHUTDOWN event, an internal error, a broken control channel).
struct ExitNote: Sendable, Equatable {
    var crashed: Bool
    var reason: String
}

/// What a control channel reports.
enum ControlState: Sendable, Equatable {
    /// Up, but the guest does not run yet.
    case notStarted
    case running
    case paused
    /// Anything else the hypervisor reports (QEMU's `internal-error`, ...).
    case other(String)
}

/// A running VM's control channel.
protocol VMControl: Sendable {
    func state() throws -> ControlState
    func pause() throws
    func resume() throws
    /// The ACPI power button.
    func powerButton() throws
    func reset() throws
    /// Counters flattened to "group.counter" -> value.
    func metrics() throws -> [String: Double]
}

/// An error from a control channel that the hypervisor answered: it
/// refused the request in the VM's current state (a 409 for the caller).
protocol ControlRefusal: Error {
    var isRefusal: Bool { get }
}

/// The drivers a daemon has, by `hypervisor:` name.
struct DriverRegistry: Sendable {
    let drivers: [any HypervisorDriver]
    /// Each binary's version, asked once at daemon start: `GET /v1/version`
    /// is served on the async executor and must not spawn processes.
    let versions: [String: String]

    init(drivers: [any HypervisorDriver]) {
        self.drivers = drivers
        var versions: [String: String] = [:]
        for driver in drivers where driver.unavailableReason() == nil {
            versions[driver.name] = driver.version()
        }
        self.versions = versions
    }

    func driver(named name: String) -> (any HypervisorDriver)? { drivers.first { $0.name == name } }

    var names: [String] { drivers.map(\.name) }

    /// The driver of a validated definition (unknown names were refused at define).
    func driver(for definition: VMDefinition) throws(DaemonError) -> any HypervisorDriver {
        guard let driver = driver(named: definition.hypervisor) else {
            throw .badRequest("invalid hypervisor '\(DefinitionValidator.printable(definition.hypervisor))': expected one of \(names.joined(separator: ", "))")
        }
        return driver
    }

    /// The drivers' define-time rules, which need no binary: a definition is
    /// checked the same whether or not its driver's binary is installed.
    static let knownNames = ["swiftlet", "qemu"]

    static func validate(_ definition: VMDefinition) throws(DaemonError) {
        switch definition.hypervisor {
        case "swiftlet": try SwiftletDriver.validateDefinition(definition)
        case "qemu": try QEMUDriver.validateDefinition(definition)
        default:
            throw .badRequest("invalid hypervisor '\(DefinitionValidator.printable(definition.hypervisor))': expected one of \(knownNames.joined(separator: ", "))")
        }
    }

    /// Whether each binary is there now (a cheap access(2)), with the versions found at start.
    func info() -> [DriverInfo] {
        drivers.map { driver in
            let reason = driver.unavailableReason()
            return DriverInfo(name: driver.name, binary: driver.binary, version: reason == nil ? versions[driver.name] : nil,
                              available: reason == nil, reason: reason)
        }
    }
}

/// Runs `binary arguments` and returns its output (stdout, and stderr when
/// `withErrors`), at most `limit` bytes: what a binary says about itself.
func programOutput(_ binary: String, _ arguments: [String], withErrors: Bool = false, limit: Int = 1 << 20) -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = withErrors ? pipe : FileHandle.nullDevice
    guard (try? process.run()) != nil else { return "" }
    // A binary that floods is cut off rather than buffered.
    let output = (try? pipe.fileHandleForReading.read(upToCount: limit)) ?? Data()
    try? pipe.fileHandleForReading.close()
    process.waitUntilExit()
    return String(decoding: output, as: UTF8.self)
}

/// The first line `binary arguments` prints (a version).
func firstOutputLine(_ binary: String, _ arguments: [String]) -> String? {
    programOutput(binary, arguments, limit: 4096).split(whereSeparator: \.isNewline).first.map(String.init)
}
