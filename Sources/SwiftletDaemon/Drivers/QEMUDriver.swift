import Foundation
import QMP
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// qemu-system-x86_64, one per VM, controlled only through QMP: one
/// socket for commands (short connections) and one the daemon keeps open
/// for events, since a QMP socket serves one client at a time.
struct QEMUDriver: HypervisorDriver {
    let binary: String
    /// Where OVMF's firmware images are (Debian's `ovmf` package).
    let firmwareDirectory: String

    var name: String { "qemu" }
    var hasControl: Bool { true }
    /// QEMU is linked against many shared libraries: it jails itself
    /// (`-chroot`, `-runas`, `-sandbox`) after opening its files instead.
    var usesJailer: Bool { false }
    var supportsSnapshots: Bool { false }
    /// The agent rides on vsock, which QEMU offers only through vhost-vsock.
    var supportsAgent: Bool { false }
    /// A NIC with `queues` > 1 still gets a multi-queue tap (QEMU then opens it with IFF_MULTI_QUEUE).
    var multiQueueTaps: Bool { false }

    static let defaultBinary = "/usr/bin/qemu-system-x86_64"
    static let defaultFirmwareDirectory = "/usr/share/OVMF"
    /// libvirt's choice too: q35 boots kernels (PVH or bzImage) and firmware,
    /// and its PCI is found by any guest. `microvm,acpi=on,pcie=on` starts
    /// faster but a guest must find PCI through ECAM alone.
    static let defaultMachine = "q35"
    /// The host CPU as swiftlet-vmm offers it (no KVM PV features that use
    /// hypercalls), so a guest sees the same CPU under both drivers. Without
    /// ARCH_CAPABILITIES: swiftlet-vmm does not set that MSR, and QEMU aborts
    /// at start on hosts whose KVM lists it but refuses the value QEMU
    /// writes (kvm_pvm on AMD: "failed to set MSR 0x10a").
    static let defaultCPU = "host,-arch-capabilities,-kvm-pv-ipi,-kvm-pv-sched-yield,-kvm-pv-unhalt"
    static let firmwareCode = "OVMF_CODE_4M.fd"
    static let firmwareVariables = "OVMF_VARS_4M.fd"

    /// Extra `-device` drivers a definition may add: none reads host files or
    /// needs a backend swiftletd does not manage.
    static let allowedDevices: Set<String> = [
        "virtio-rng-pci", "virtio-balloon-pci", "virtio-keyboard-pci", "virtio-mouse-pci", "virtio-tablet-pci",
        "virtio-gpu-pci", "VGA", "bochs-display", "pvpanic", "pvpanic-pci", "i6300esb", "qemu-xhci", "usb-ehci",
        "usb-kbd", "usb-mouse", "usb-tablet", "pci-bridge", "pcie-root-port",
    ]
    /// Device properties that name a host file or a backend: refused.
    static let refusedProperties: Set<String> = ["romfile", "file", "chardev", "drive", "netdev", "memdev", "audiodev", "filename"]

    init(binary: String = QEMUDriver.defaultBinary, firmwareDirectory: String = QEMUDriver.defaultFirmwareDirectory) {
        self.binary = binary
        self.firmwareDirectory = firmwareDirectory
    }

    static func commandSocket(_ directory: RunDirectory) -> String { directory.path + "/qmp.sock" }
    static func eventSocket(_ directory: RunDirectory) -> String { directory.path + "/qmp-events.sock" }
    /// The VM's UEFI variable store, kept across runs.
    static func variableStore(_ directory: RunDirectory) -> String { directory.path + "/OVMF_VARS.fd" }

    func unavailableReason() -> String? {
        access(binary, X_OK) == 0 ? nil : "qemu-system-x86_64 at \(binary) is not executable; install Debian's qemu-system-x86 or restart swiftletd with --qemu PATH"
    }

    func version() -> String? {
        // "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
        guard let line = firstOutputLine(binary, ["--version"]), let range = line.range(of: "version ") else { return nil }
        return line[range.upperBound...].split(separator: " ").first.map(String.init)
    }

    func validate(_ definition: VMDefinition) throws(DaemonError) { try Self.validateDefinition(definition) }

    static func validateDefinition(_ definition: VMDefinition) throws(DaemonError) {
        switch (definition.kernel, definition.firmware) {
        case (nil, nil): throw .badRequest("neither kernel nor firmware: give kernel: FILE, or firmware: uefi|bios to boot disks[0]")
        case (.some, .some): throw .badRequest("both kernel and firmware: give one (a kernel boots directly; firmware boots disks[0])")
        case (nil, let firmware?):
            guard ["uefi", "bios"].contains(firmware) else {
                throw .badRequest("invalid firmware '\(DefinitionValidator.printable(firmware))': expected uefi or bios")
            }
            guard !definition.disks.isEmpty else { throw .badRequest("firmware \(firmware) boots disks[0], and there are no disks") }
            if definition.initrd != nil || definition.cmdline != nil {
                throw .badRequest("initrd and cmdline go with a kernel; firmware \(firmware) boots disks[0]")
            }
        case (.some, nil): break
        }
        guard let options = definition.qemu else { return }
        if let machine = options.machine {
            try Self.checkOptionString(machine, field: "qemu.machine")
        }
        if let cpu = options.cpu {
            try Self.checkOptionString(cpu, field: "qemu.cpu", extra: "+")
        }
        guard options.devices.count <= 32 else { throw .badRequest("qemu.devices has \(options.devices.count) entries; at most 32") }
        for (index, device) in options.devices.enumerated() {
            let field = "qemu.devices[\(index)]"
            try Self.checkOptionString(device, field: field)
            let parts = device.split(separator: ",", omittingEmptySubsequences: false)
            let driver = String(parts.first ?? "")
            guard Self.allowedDevices.contains(driver) else {
                throw .badRequest("\(field) '\(DefinitionValidator.printable(device))': device '\(DefinitionValidator.printable(driver))' is not allowed; allowed: \(Self.allowedDevices.sorted().joined(separator: ", "))")
            }
            for property in parts.dropFirst() {
                let key = property.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
                if Self.refusedProperties.contains(key) {
                    throw .badRequest("\(field) '\(DefinitionValidator.printable(device))': property '\(key)' names a host file or backend; swiftletd manages disks, NICs and the console")
                }
            }
        }
    }

    /// A QEMU option value: letters, digits and `.,=_-:` (no path, no spaces).
    static func checkOptionString(_ value: String, field: String, extra: String = "") throws(DaemonError) {
        let allowed = ".,=_-:" + extra
        guard !value.isEmpty, value.utf8.count <= 256,
              value.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || allowed.unicodeScalars.contains($0) }),
              !value.hasPrefix("-") else {
            throw .badRequest("invalid \(field) '\(DefinitionValidator.printable(value))': 1 to 256 of A-Z a-z 0-9 and \(allowed), not starting with '-'")
        }
    }

    func arguments(_ launch: LaunchContext) throws(DaemonError) -> [String] {
        let definition = launch.definition
        let directory = launch.directory
        let options = definition.qemu ?? VMDefinition.QEMUOptions()
        let machine = options.machine ?? Self.defaultMachine
        var arguments = [
            "-name", "guest=\(definition.name),debug-threads=on",
            "-machine", machine, "-accel", "kvm", "-cpu", options.cpu ?? Self.defaultCPU,
            "-smp", String(definition.cpus), "-m", "\(definition.memoryMiB)M",
            "-nodefaults", "-no-user-config", "-display", "none",
            // The console: stdin is the VM's input FIFO, stdout its console log.
            "-chardev", definition.console == "log" ? "stdio,id=console,signal=off" : "null,id=console",
            "-serial", "chardev:console",
            "-qmp", "unix:\(Self.commandSocket(directory)),server=on,wait=off",
            "-qmp", "unix:\(Self.eventSocket(directory)),server=on,wait=off",
        ]
        if definition.onReboot == "shutdown" { arguments += ["-action", "reboot=shutdown"] }
        if let kernel = definition.kernel {
            arguments += ["-kernel", kernel]
            if let initrd = definition.initrd { arguments += ["-initrd", initrd] }
            if let cmdline = definition.cmdline { arguments += ["-append", cmdline] }
        } else if definition.firmware == "uefi" {
            let code = firmwareDirectory + "/" + Self.firmwareCode
            let template = firmwareDirectory + "/" + Self.firmwareVariables
            guard access(code, R_OK) == 0, access(template, R_OK) == 0 else {
                throw .unavailable("cannot start '\(definition.name)': UEFI firmware \(code) or \(template) is missing; install Debian's ovmf package")
            }
            // Each VM keeps its own variable store (boot entries), copied from OVMF's template once.
            let store = Self.variableStore(directory)
            if access(store, F_OK) != 0 {
                do { try FileManager.default.copyItem(atPath: template, toPath: store) } catch {
                    throw .internal("cannot start '\(definition.name)': copying \(template) to \(store): \(error)")
                }
            }
            arguments += ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=\(code)",
                          "-drive", "if=pflash,format=raw,unit=1,file=\(store)"]
        }
        for (index, disk) in definition.disks.enumerated() {
            var drive = "file=\(disk.path ?? ""),format=\(disk.format ?? "raw"),if=none,id=disk\(index)"
            if disk.readonly { drive += ",readonly=on" }
            // Modern-only virtio, as swiftlet-vmm offers: the guest sees the same devices.
            var device = "virtio-blk-pci,drive=disk\(index),disable-legacy=on"
            // swiftlet-vmm answers GET_ID with the disk's id; QEMU with its serial.
            if let id = disk.id { device += ",serial=\(id)" }
            if index == 0 && definition.firmware != nil { device += ",bootindex=0" }
            arguments += ["-drive", drive, "-device", device]
        }
        for (index, nic) in definition.nics.enumerated() {
            var netdev = "tap,id=net\(index),ifname=\(nic.tap ?? ""),script=no,downscript=no"
            var device = "virtio-net-pci,netdev=net\(index),disable-legacy=on"
            if let mac = nic.mac { device += ",mac=\(mac)" }
            if nic.queuePairs > 1 {
                // QEMU opens the tap once per pair (IFF_MULTI_QUEUE); the device
                // needs an MSI-X vector per queue, plus the control queue and config.
                netdev += ",queues=\(nic.queuePairs)"
                device += ",mq=on,vectors=\(2 * nic.queuePairs + 2)"
            }
            if let mtu = nic.mtu { device += ",host_mtu=\(mtu)" }
            arguments += ["-netdev", netdev]
            arguments += ["-device", device]
        }
        for device in options.devices { arguments += ["-device", device] }
        if let jail = launch.jail, let root = launch.chrootDirectory {
            // After opening its files QEMU drops to the jail's user, enters an
            // empty root and filters its system calls. The filter comes first
            // and must let `-runas` call setuid, so elevateprivileges stays
            // allowed: once QEMU runs as the jail user it has nothing to elevate to.
            arguments += ["-runas", "\(jail.uid):\(jail.gid)", "-chroot", root,
                          "-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny"]
        }
        return arguments
    }

    func control(_ directory: RunDirectory, timeout: Double) -> any VMControl {
        QEMUControl(socketPath: Self.commandSocket(directory), timeout: timeout)
    }

    func removeRunFiles(_ directory: RunDirectory) {
        unlink(Self.commandSocket(directory))
        unlink(Self.eventSocket(directory))
    }

    func isOwnExecutable(_ baseName: String) -> Bool { baseName.hasPrefix("qemu-system") }

    /// Follows the event socket until QEMU closes it: SHUTDOWN's reason says
    /// why QEMU is about to exit (its exit status is 0 for almost every
    /// ending); a STOP into `internal-error` or `guest-panicked` is a crash,
    /// after which QEMU would wait paused, so it is told to quit.
    func watch(name: String, pid: pid_t, directory: RunDirectory, note: @escaping @Sendable (ExitNote) -> Void) {
        let socket = Self.eventSocket(directory)
        let thread = Thread {
            var client: QMPClient?
            // QEMU creates its sockets while it starts.
            for _ in 0..<500 where client == nil && HostProcess.isAlive(pid) {
                do { client = try QMPClient(socketPath: socket, timeout: 5) } catch { usleep(20_000) }
            }
            guard let client else { return }
            defer { client.close() }
            while true {
                let event: QMPEvent?
                do throws(QMPError) { event = try client.nextEvent(timeout: 3600) } catch {
                    if case .closed = error { return }
                    // A QMP stream that breaks while QEMU lives: swiftletd can no
                    // longer tell what the VM does, so it ends it and says why.
                    guard HostProcess.isAlive(pid) else { return }
                    note(ExitNote(crashed: true, reason: "QMP failed: \(error)"))
                    kill(pid, SIGKILL)
                    return
                }
                guard let event else { continue }
                if let ending = Self.exitNote(for: event, status: { try? client.queryStatus().status }) {
                    note(ending)
                    if ending.crashed { _ = try? client.execute("quit") }
                }
            }
        }
        thread.stackSize = 128 * 1024
        thread.start()
    }

    /// What an event says about the VM's end; `status` asks QEMU's run state.
    static func exitNote(for event: QMPEvent, status: () -> String?) -> ExitNote? {
        switch event.name {
        case "SHUTDOWN":
            let reason = event.data["reason"]?.string ?? "unknown"
            switch reason {
            case "guest-shutdown": return ExitNote(crashed: false, reason: "the guest powered off")
            case "guest-reset": return ExitNote(crashed: false, reason: "the guest rebooted (on_reboot: shutdown)")
            case "guest-panic": return ExitNote(crashed: true, reason: "the guest panicked")
            case "host-qmp-system-reset": return ExitNote(crashed: false, reason: "the guest rebooted (on_reboot: shutdown)")
            case "host-qmp-quit": return ExitNote(crashed: false, reason: "destroyed (QMP quit)")
            case "host-signal": return ExitNote(crashed: false, reason: "stopped by a signal")
            default: return ExitNote(crashed: false, reason: "QEMU shut down (\(reason))")
            }
        case "GUEST_PANICKED":
            return ExitNote(crashed: true, reason: "the guest panicked")
        case "STOP":
            switch status() {
            case "internal-error"?: return ExitNote(crashed: true, reason: "the guest crashed: KVM internal error (QEMU stopped the VM)")
            case "guest-panicked"?: return ExitNote(crashed: true, reason: "the guest panicked")
            default: return nil
            }
        default:
            return nil
        }
    }

    func outcome(status: Int32?, request: Supervisor.StopRequest?, stderrTail: String, note: ExitNote?) -> (VMState, String) {
        let detail = stderrTail.isEmpty ? "" : ": " + stderrTail
        if let note, note.crashed { return (.crashed, note.reason + detail) }
        guard let status else {
            if request != nil { return (.shutOff, "stopped") }
            if let note { return (.shutOff, note.reason) }
            return (.shutOff, "qemu-system-x86_64 ended while swiftletd was not its parent (exit status unknown)\(detail)")
        }
        let terminatingSignal = status & 0x7f
        if terminatingSignal != 0 {
            let name = HostProcess.signalName(terminatingSignal)
            if request == .destroy || request == .reboot { return (.shutOff, "destroyed (\(name) after the grace period)") }
            return (.crashed, "qemu-system-x86_64 was killed by \(name)")
        }
        let code = (status >> 8) & 0xff
        guard code == 0 else { return (.crashed, "qemu-system-x86_64 failed (status \(code))\(detail)") }
        switch request {
        case .destroy?, .reboot?: return (.shutOff, "destroyed")
        case .shutdown?: return (.shutOff, "shut down")
        case nil:
            guard let note else { return (.shutOff, "qemu-system-x86_64 exited without saying why (status 0)") }
            if note.reason == "stopped by a signal" { return (.shutOff, "stopped by a signal from outside swiftletd (SIGTERM, SIGINT or SIGHUP)") }
            return (.shutOff, note.reason)
        }
    }
}

/// QMP commands, one short connection each.
struct QEMUControl: VMControl {
    let socketPath: String
    let timeout: Double

    func withClient<T>(_ body: (QMPClient) throws -> T) throws -> T {
        let client = try QMPClient(socketPath: socketPath, timeout: timeout)
        defer { client.close() }
        return try body(client)
    }

    func state() throws -> ControlState {
        switch try withClient({ try $0.queryStatus().status }) {
        case "running": .running
        case "paused": .paused
        case "prelaunch", "inmigrate": .notStarted
        case let other: .other(other)
        }
    }
    func pause() throws { _ = try withClient { try $0.execute("stop") } }
    func resume() throws { _ = try withClient { try $0.execute("cont") } }
    func powerButton() throws { _ = try withClient { try $0.execute("system_powerdown") } }
    func reset() throws { _ = try withClient { try $0.execute("system_reset") } }

    /// vCPUs and each disk's counters (`query-blockstats`).
    func metrics() throws -> [String: Double] {
        try withClient { client in
            var result: [String: Double] = ["vcpus.count": Double(try client.queryCPUCount())]
            for entry in try client.execute("query-blockstats").array ?? [] {
                guard let device = entry["device"]?.string, !device.isEmpty, let stats = entry["stats"] else { continue }
                for (key, counter) in [("rd_bytes", "read_bytes"), ("wr_bytes", "write_bytes"), ("rd_operations", "read_count"),
                                       ("wr_operations", "write_count"), ("flush_operations", "flush_count")] {
                    if let value = stats[key]?.number { result["block_\(device).\(counter)"] = value }
                }
            }
            return result
        }
    }
}

extension QMPError: ControlRefusal {
    var isRefusal: Bool {
        if case .commandFailed = self { return true }
        return false
    }
}
