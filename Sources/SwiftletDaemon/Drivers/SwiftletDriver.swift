import Foundation
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// swiftlet-vmm, one per VM, controlled through its Firecracker-style API
/// socket (`--api-sock`), jailed by swiftlet-jailer.
struct SwiftletDriver: HypervisorDriver {
    let binary: String
    /// Whether this swiftlet-vmm serves the control API (`--api-sock`).
    let hasControl: Bool
    /// Whether its `--disk` takes `format=raw|qcow2`.
    let hasDiskFormats: Bool

    var name: String { "swiftlet" }
    var usesJailer: Bool { true }
    var supportsSnapshots: Bool { hasControl }
    var supportsAgent: Bool { true }
    var multiQueueTaps: Bool { true }

    init(binary: String) {
        self.binary = binary
        let help = Self.helpText(binary)
        hasControl = help.contains("--api-sock")
        hasDiskFormats = help.contains("format=raw")
    }

    /// A driver whose binary is not asked what it supports (tests).
    init(binary: String, hasControl: Bool, hasDiskFormats: Bool) {
        self.binary = binary
        self.hasControl = hasControl
        self.hasDiskFormats = hasDiskFormats
    }

    /// `swiftlet-vmm --help`, to learn what this VMM binary supports.
    static func helpText(_ binary: String) -> String { programOutput(binary, ["--help"], withErrors: true) }

    func unavailableReason() -> String? {
        access(binary, X_OK) == 0 ? nil : "swiftlet-vmm at \(binary) is not executable; restart swiftletd with --vmm PATH"
    }

    func version() -> String? {
        // `swiftlet-vmm --version` prints "... vX.Y.Z".
        firstOutputLine(binary, ["--version"]).map { line in
            let word = line.split(separator: " ").last.map(String.init) ?? line
            return word.hasPrefix("v") ? String(word.dropFirst()) : word
        }
    }

    func validate(_ definition: VMDefinition) throws(DaemonError) { try Self.validateDefinition(definition) }

    static func validateDefinition(_ definition: VMDefinition) throws(DaemonError) {
        guard definition.kernel != nil else {
            throw .badRequest("kernel is missing: swiftlet VMs boot a kernel directly (firmware boot needs hypervisor: qemu)")
        }
        if let firmware = definition.firmware {
            throw .badRequest("firmware '\(DefinitionValidator.printable(firmware))' needs hypervisor: qemu; swiftlet VMs boot their kernel directly")
        }
        if definition.qemu != nil { throw .badRequest("the qemu section is for hypervisor: qemu only") }
    }

    func arguments(_ launch: LaunchContext) throws(DaemonError) -> [String] {
        let definition = launch.definition
        let path = launch.path
        if !hasDiskFormats, let index = definition.disks.firstIndex(where: { $0.format == "qcow2" }) {
            throw .badRequest("cannot start '\(definition.name)': disks[\(index)] is qcow2 and swiftlet-vmm at \(binary) reads raw images only")
        }
        // A restore configures nothing on the command line: the VMM waits on
        // its API for `PUT /snapshot/load`, whose state file holds the machine.
        var arguments = ["--serial", definition.console == "log" ? "stdio" : "none",
                         "--on-reboot", definition.onReboot == "restart" ? "restart" : "exit"]
        if !launch.restoring {
            arguments += ["--kernel", path(definition.kernel ?? ""), "--cpus", String(definition.cpus), "--memory", "\(definition.memoryMiB)M"]
            if let initrd = definition.initrd { arguments += ["--initrd", path(initrd)] }
            if let cmdline = definition.cmdline { arguments += ["--cmdline", cmdline] }
            for disk in definition.disks {
                var value = "path=\(path(disk.path ?? ""))"
                if hasDiskFormats, let format = disk.format { value += ",format=\(format)" }
                if disk.readonly { value += ",readonly=on" }
                if let id = disk.id { value += ",id=\(id)" }
                arguments += ["--disk", value]
            }
            // Every VM gets a vsock device for its guest agent (CID 3: each VM is its own VMM).
            arguments += ["--vsock", "cid=3,uds=" + (launch.jail == nil ? launch.directory.vsockSocket : "/vsock.sock")]
            for nic in definition.nics {
                var value = "tap=\(nic.tap ?? "")"
                if let mac = nic.mac { value += ",mac=\(mac)" }
                if let id = nic.id { value += ",id=\(id)" }
                // Left out at their defaults, so a single-queue NIC's argument is as before.
                if nic.queuePairs > 1 { value += ",queues=\(nic.queuePairs)" }
                if let mtu = nic.mtu { value += ",mtu=\(mtu)" }
                arguments += ["--net", value]
            }
        }
        if hasControl {
            // The jailer passes its own --id (the jail id) to the VMM.
            arguments += launch.jail == nil ? ["--api-sock", launch.directory.apiSocket, "--id", definition.name] : ["--api-sock", "/api.sock"]
        }
        return arguments
    }

    func control(_ directory: RunDirectory, timeout: Double) -> any VMControl {
        SwiftletControl(api: VMMControl(socketPath: directory.apiSocket, timeout: timeout))
    }

    /// swiftlet-vmm's exit status says why it ended; nothing to follow meanwhile.
    func watch(name: String, pid: pid_t, directory: RunDirectory, note: @escaping @Sendable (ExitNote) -> Void) {}

    func removeRunFiles(_ directory: RunDirectory) {
        unlink(directory.apiSocket)
        unlink(directory.vsockSocket)
    }

    func isOwnExecutable(_ baseName: String) -> Bool { baseName.hasPrefix("swiftlet-vmm") }

    /// Maps swiftlet-vmm's exit status (docs/running-vms.md) to a state and reason.
    func outcome(status: Int32?, request: Supervisor.StopRequest?, stderrTail: String, note: ExitNote?) -> (VMState, String) {
        Self.outcome(status: status, request: request, stderrTail: stderrTail)
    }

    static func outcome(status: Int32?, request: Supervisor.StopRequest?, stderrTail: String) -> (VMState, String) {
        let detail = stderrTail.isEmpty ? "" : ": " + stderrTail
        guard let status else {
            if stderrTail.contains("crash") || stderrTail.contains("triple fault") || stderrTail.contains("emulation") {
                return (.crashed, "swiftlet-vmm ended while swiftletd was not its parent\(detail)")
            }
            return (.shutOff, request != nil ? "stopped" : "swiftlet-vmm ended while swiftletd was not its parent (exit status unknown)\(detail)")
        }
        let terminatingSignal = status & 0x7f
        if terminatingSignal != 0 {
            let name = HostProcess.signalName(terminatingSignal)
            if request == .destroy || request == .reboot { return (.shutOff, "destroyed (\(name) after the grace period)") }
            return (.crashed, "swiftlet-vmm was killed by \(name)")
        }
        let code = (status >> 8) & 0xff
        switch code {
        case 0: return (.shutOff, request == .shutdown ? "shut down" : "the guest powered off")
        case 2: return (.shutOff, "the guest rebooted (on_reboot: shutdown)")
        case 3: return (.crashed, "the guest crashed\(detail)")
        case 4:
            switch request {
            case .destroy?, .reboot?: return (.shutOff, "destroyed")
            case .shutdown?: return (.shutOff, "shut down (SIGTERM: this VMM has no graceful shutdown)")
            case nil: return (.shutOff, "stopped by a signal from outside swiftletd (SIGTERM, SIGINT or SIGHUP)")
            }
        case 1: return (.crashed, "swiftlet-vmm failed (status 1)\(detail)")
        default: return (.crashed, "swiftlet-vmm exited with status \(code)\(detail)")
        }
    }
}

/// swiftlet-vmm's API as a `VMControl`.
struct SwiftletControl: VMControl {
    let api: VMMControl

    func state() throws -> ControlState {
        // The API answers before the vCPUs run ("Not started").
        switch try api.state() {
        case "Running"?: .running
        case "Paused"?: .paused
        case "Not started"?: .notStarted
        case let other: .other(other ?? "unknown")
        }
    }
    func pause() throws { try api.pause() }
    func resume() throws { try api.resume() }
    func powerButton() throws { try api.action("Shutdown") }
    func reset() throws { try api.action("Reboot") }
    func metrics() throws -> [String: Double] { try api.metrics() }
}

extension VMMControl.Failure: ControlRefusal {
    var isRefusal: Bool { status.map { (400..<500).contains($0) } ?? false }
}
