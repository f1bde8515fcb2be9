import ControlAPI
import HostSystem
import SwiftletVersion
import VMM

/// swiftlet-vmm's command line. Parsed by hand rather than with
/// swift-argument-parser, which links Foundation: the VMM runs once per VM,
/// and its resident memory and start-up time are product features.
public enum VMMArguments {
    /// What the command line asks for.
    public enum Action: Equatable, Sendable {
        case run(VMConfiguration)
        /// Firecracker-style: with the control API (`--api-sock`) and/or a
        /// Firecracker `--config-file`.
        case serve(APIMode)
        case help
        case version
    }

    /// How to run with the control API.
    public struct APIMode: Equatable, Sendable {
        /// Where to serve the API; nil runs a `--config-file` VM without one.
        public var socketPath: String?
        public var instanceID: String
        public var logPath: String?
        /// The settings so far; `bootSource` is set when the VM boots at once.
        public var configuration: InstanceConfiguration
        /// Boot without waiting for InstanceStart (`--kernel`, `--config`, `--config-file`).
        public var bootsAtOnce: Bool
        /// `--level`, `--show-level`, `--show-log-origin`, `--module`.
        public var logSettings = APILog.Settings()
        /// `--metrics-path`: Firecracker-layout metrics from the start.
        public var metricsPath: String?
        /// `--seccomp-filter FILE` (Firecracker's compiled filters); nil installs Swiftlet's own.
        public var seccompFilterPath: String?
        /// `--no-seccomp`: no filters at all.
        public var noSeccomp = false
        /// `--boot-timer`: the guest's write of 123 to the boot-timer device is logged.
        public var bootTimer = false
        /// `--http-api-max-payload-size`: the largest request body, in bytes.
        public var maximumPayloadSize = VMMArguments.defaultMaximumPayloadSize
        /// The jailer's `--start-time-us`, `--start-time-cpu-us`, `--parent-cpu-time-us`.
        public var startTimeMicroseconds: UInt64?
        public var startTimeCPUMicroseconds: UInt64?
        public var parentCPUTimeMicroseconds: UInt64?
    }

    /// Firecracker's default instance id.
    public static let defaultInstanceID = "anonymous-instance"
    /// Where Firecracker serves its API when started without `--api-sock`.
    public static let defaultSocketPath = "/run/firecracker.socket"
    /// Firecracker's default request body limit (`--http-api-max-payload-size`).
    public static let defaultMaximumPayloadSize = 51200

    /// The options that take a value, with their help text.
    static let options: [(name: String, value: String, help: String)] = [
        ("kernel", "PATH", "Kernel image: an uncompressed ELF vmlinux (booted through its PVH entry) or a bzImage."),
        ("initrd", "PATH", "Initial ramdisk (a cpio archive, optionally compressed)."),
        ("cmdline", "TEXT", "Kernel command line (default: \"\(VMConfiguration.defaultCommandLine)\")."),
        ("cpus", "N", "Number of vCPUs, 1 to 254 and at most what KVM allows (default 1)."),
        ("memory", "SIZE", "Guest RAM: 512M, 2G, or a plain number of MiB (default 128M)."),
        ("serial", "MODE", "COM1: stdio (interactive, Ctrl-A x quits), file:PATH, or none (default stdio)."),
        ("console", "DEVICE", "The guest's console device: serial (COM1, ttyS0) or virtio (virtio-console, hvc0; pass console=hvc0 in --cmdline). It uses what --serial names (default serial)."),
        ("disk", "SPEC", "A virtio-blk disk, repeatable: path=PATH[,readonly=on|off][,id=ID][,direct=on|off][,format=raw|qcow2]. PATH is a raw image (a multiple of 512 bytes) or a qcow2 image; id (GET_ID, 1-20 of A-Z a-z 0-9 - _ .) defaults to disk0, disk1...; direct=on opens it O_DIRECT (raw only); without format= the format is probed, so give it for any image the guest writes."),
        ("on-reboot", "ACTION", "When the guest reboots: restart it, or exit with status 2 (default exit)."),
        ("config", "FILE", "JSON file with the same settings: \(ConfigurationFile.knownKeys.joined(separator: ", ")). Flags given as well override it."),
        ("kvm-device", "PATH", "The KVM device node (default /dev/kvm)."),
        ("trace-exits", "FILE", "When the VM stops, write where its time went to FILE: the run's phases and every exit kind by port or MMIO address with its count, time in KVM_RUN and time in the VMM (docs/performance.md)."),
        ("api-sock", "PATH", "Serve the control API (HTTP/1.1, Firecracker's resources) on this Unix socket, mode 0600. Without --kernel or --config this is Firecracker's mode: the API is served (on \(defaultSocketPath) unless given) and the VM waits for PUT /boot-source and InstanceStart."),
        ("id", "ID", "Instance id reported by GET / and in log lines (default \(defaultInstanceID))."),
        ("log-path", "PATH", "Log to this file or FIFO (opened read-write, non-blocking, as Firecracker does), in Firecracker's line format."),
        ("level", "LEVEL", "Log level: Error, Warning, Info, Debug, Trace or Off (default Info)."),
        ("module", "NAME", "Log only lines from source modules starting with NAME (Swiftlet's module names, e.g. ControlAPI)."),
        ("metrics-path", "PATH", "Write Firecracker-layout metrics to this file or FIFO: on FlushMetrics, every 60 s while the VM runs, and at exit."),
        ("config-file", "FILE", "Firecracker-layout JSON (boot-source, machine-config, drives, network-interfaces, entropy, logger, metrics, vsock, mmds-config): boot it at once."),
        ("seccomp-filter", "FILE", "Install these seccomp filters (Firecracker's compiled format, from seccompiler-bin): the vmm, api and vcpu programs on their threads before the guest runs. They must allow what Swiftlet calls. Without it, Swiftlet installs its own (docs/seccomp.md)."),
        ("http-api-max-payload-size", "BYTES", "The largest API request body (default \(defaultMaximumPayloadSize), Firecracker's)."),
        ("start-time-us", "US", "The jailer's: CLOCK_MONOTONIC microseconds when the process was started; the metrics report the time to serve the API."),
        ("start-time-cpu-us", "US", "The jailer's: the process CPU time in microseconds at that moment; the metrics report the CPU time to serve the API."),
        ("parent-cpu-time-us", "US", "The jailer's: CPU time its parent spent, in microseconds, added to the CPU start-up time."),
        ("vsock", "SPEC", "A virtio-vsock device, Firecracker's hybrid model: cid=N,uds=PATH. The VMM listens on the Unix socket PATH (which must not exist; removed at exit): a host process connects, writes \"CONNECT <port>\\n\" and reads \"OK <host port>\\n\" once the guest accepts. Guest connections to CID 2 port P go to PATH_P. N is the guest's CID, 3 to 4294967294."),
        ("net", "SPEC", "A virtio-net interface on a tap (repeatable): tap=NAME (created if missing; needs CAP_NET_ADMIN unless made for you) or tap-fd=N (an open tap with vnet headers), then optionally ,mac=52:54:00:12:34:56 (default: derived from id and tap), ,id=ID (default net0, net1, ...), ,offloads=off, ,queues=N (1-16 queue pairs: multiqueue with one tap queue and worker each; tap= only), ,mtu=N (68-65535, offered to the guest)."),
        ("transport", "KIND", "How the guest reaches the virtio devices: pci (virtio-pci, MSI-X) or mmio (virtio-mmio pages announced on the kernel command line as virtio_mmio.device= and in the ACPI DSDT, at most \(VirtioTransportKind.maximumMMIODevices) devices; the guest may boot with pci=off). Default: mmio when configured as Firecracker is (--config-file, or --api-sock without --kernel/--config) unless --enable-pci; else pci."),
    ] + metadataOptions

    /// Options that may be given more than once, each adding a device.
    static let repeatableOptions: Set<String> = ["disk", "net"]

    /// The options that take no value (on when given), with their help text.
    static let switches: [(name: String, help: String)] = [
        ("rng", "Add a virtio-rng device fed from the host's getrandom; the guest sees /dev/hwrng."),
        ("no-api", "Run a --config-file VM without serving the API (Firecracker's flag; needs --config-file)."),
        ("no-seccomp", "Install no seccomp filters (by default each thread gets Swiftlet's filter for its kind; a forbidden call ends the VMM with SIGSYS)."),
        ("boot-timer", "Add Firecracker's boot-timer device (MMIO at 0xD0000000): the guest's write of 123 to it logs \"Guest-boot-time = ...\"."),
        ("show-level", "Show each log line's level."),
        ("show-log-origin", "Show each log line's source file and line."),
        ("enable-pci", "Firecracker's switch: put the virtio devices on PCI (--transport pci); an explicit --transport wins."),
    ]

    /// Swiftlet's version, as every executable reports it.
    public static let versionNumber = SwiftletVersion.current
    /// `--version`'s first line: Firecracker's layout ("Firecracker v1.7.0"), which Kata's check parses.
    public static let version = "Swiftlet v\(versionNumber)"

    /// The options that make a `--kernel` run use the Firecracker-style runner (logger, metrics, API).
    static let processOptions = ["api-sock", "id", "log-path", "config-file", "level", "module", "metrics-path", "seccomp-filter",
                                 "http-api-max-payload-size", "start-time-us", "start-time-cpu-us", "parent-cpu-time-us",
                                 "no-api", "no-seccomp", "boot-timer", "show-level", "show-log-origin"]

    public static let help: String = {
        var text = """
            USAGE: swiftlet-vmm --kernel PATH [options]
                   swiftlet-vmm [--api-sock PATH] [--id ID] [--config-file FILE [--no-api]] [options]

            Runs one KVM virtual machine: boots a Linux kernel (ELF vmlinux through its
            PVH entry, or a bzImage through the 64-bit boot protocol) on /dev/kvm with an
            8250 serial console and ACPI power-off.

            Without --kernel or --config it behaves as Firecracker: it serves Firecracker's
            API on --api-sock (default \(defaultSocketPath)) unless --no-api, and takes
            Firecracker's flags. Installed as `firecracker`, Firecracker's clients drive it.

            OPTIONS:

            """
        for option in options {
            let flag = "  --\(option.name) \(option.value)"
            text += flag.padding(to: 24) + option.help + "\n"
        }
        for option in switches {
            text += "  --\(option.name)".padding(to: 24) + option.help + "\n"
        }
        text += "  -h, --help".padding(to: 24) + "Show this help.\n"
        text += "  --version".padding(to: 24) + "Show the version.\n"
        text += """

            EXIT STATUS:
              0  the guest powered off (or Ctrl-A x, or the control API's Stop)
              1  bad input or a host error: one line on stderr names the bad value
              2  the guest rebooted and --on-reboot is exit
              3  the guest crashed (triple fault, emulation failure); registers on stderr
              4  SIGINT, SIGTERM or SIGHUP stopped the VM

            EXAMPLE:
              swiftlet-vmm --kernel vmlinux --initrd initrd.cpio.gz --cpus 2 --memory 256M
              swiftlet-vmm --kernel vmlinux --net tap=tap0,mac=52:54:00:12:34:56
              swiftlet-vmm --api-sock /tmp/fc.sock --log-path /tmp/fc.log --level Debug   (Firecracker's way: configure over the API)
              swiftlet-vmm --config-file vm.json --no-api

            """
        return text
    }()

    /// Parses `arguments` (without the program name). Accepts `--name value`
    /// and `--name=value`; every problem is a VMMError naming the argument.
    public static func parse(_ arguments: [String]) throws(VMMError) -> Action {
        var values: [String: String] = [:]
        var repeated: [String: [String]] = [:]
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "-h" || argument == "--help" { return .help }
            if argument == "--version" { return .version }
            guard argument.hasPrefix("--"), argument.count > 2 else {
                throw .invalidConfiguration(field: "argument", value: argument, expected: "an option such as --kernel PATH (see --help)")
            }
            var name = String(argument.dropFirst(2))
            var value: String?
            if let equals = name.firstIndex(of: "=") {
                value = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            }
            if switches.contains(where: { $0.name == name }) {
                guard value == nil else {
                    throw .invalidConfiguration(field: "option", value: "--\(name)=\(value ?? "")", expected: "--\(name) alone (it takes no value)")
                }
                guard values[name] == nil else {
                    throw .invalidConfiguration(field: "option", value: "--\(name)", expected: "at most once")
                }
                values[name] = "on"
                continue
            }
            guard options.contains(where: { $0.name == name }) else {
                throw .invalidConfiguration(field: "option", value: "--\(name)",
                                            expected: "one of " + (options.map(\.name) + switches.map(\.name)).map { "--\($0)" }.joined(separator: ", "))
            }
            if value == nil {
                guard index < arguments.count else {
                    throw .invalidConfiguration(field: "option", value: "--\(name)", expected: "a value after it")
                }
                value = arguments[index]
                index += 1
            }
            if repeatableOptions.contains(name), let value {
                repeated[name, default: []].append(value)
                continue
            }
            guard values[name] == nil else {
                throw .invalidConfiguration(field: "option", value: "--\(name)", expected: "at most once")
            }
            values[name] = value
        }
        // Firecracker's invocation names no kernel: it serves the API (or
        // boots --config-file). With --kernel/--config, Swiftlet's own run,
        // through the API runner only when a Firecracker process option asks for it.
        let firecrackerStyle = values["kernel"] == nil && values["config"] == nil
        guard firecrackerStyle || (processOptions + ["metadata", "mmds-size-limit"]).contains(where: { values[$0] != nil }) else {
            return .run(try configuration(from: values, repeated: repeated))
        }
        return .serve(try apiMode(from: values, repeated: repeated))
    }

    /// A whole number option (`--start-time-us`, ...).
    static func number(_ values: [String: String], _ name: String, in range: ClosedRange<UInt64> = 0...UInt64.max) throws(VMMError) -> UInt64? {
        guard let text = values[name] else { return nil }
        guard let value = UInt64(text), range.contains(value) else {
            throw .invalidConfiguration(field: name, value: text, expected: "a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    /// The process options every API mode shares: logger, metrics, seccomp, limits, start times.
    static func applyProcessOptions(_ values: [String: String], to mode: inout APIMode) throws(VMMError) {
        if let text = values["level"] {
            guard let level = APILog.Level(name: text) else {
                throw .invalidConfiguration(field: "level", value: text, expected: "one of \(APILog.Level.names)")
            }
            mode.logSettings.level = level
        }
        mode.logSettings.showLevel = values["show-level"] != nil
        mode.logSettings.showOrigin = values["show-log-origin"] != nil
        mode.logSettings.module = values["module"]
        mode.metricsPath = values["metrics-path"]
        if values["no-seccomp"] != nil, values["seccomp-filter"] != nil {
            throw .invalidConfiguration(field: "option", value: "--no-seccomp", expected: "not with --seccomp-filter")
        }
        mode.seccompFilterPath = values["seccomp-filter"]
        mode.noSeccomp = values["no-seccomp"] != nil
        mode.bootTimer = values["boot-timer"] != nil
        if let size = try number(values, "http-api-max-payload-size", in: 1024...(64 << 20)) { mode.maximumPayloadSize = Int(size) }
        mode.startTimeMicroseconds = try number(values, "start-time-us")
        mode.startTimeCPUMicroseconds = try number(values, "start-time-cpu-us")
        mode.parentCPUTimeMicroseconds = try number(values, "parent-cpu-time-us")
    }

    /// The Firecracker-style modes: `--api-sock` and/or `--config-file`.
    static func apiMode(from values: [String: String], repeated: [String: [String]] = [:]) throws(VMMError) -> APIMode {
        let instanceID = values["id"] ?? defaultInstanceID
        let idBytes = Array(instanceID.utf8)
        guard (1...64).contains(idBytes.count), idBytes.allSatisfy({ byte in
            (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
        }) else {
            throw .invalidConfiguration(field: "id", value: instanceID, expected: "1 to 64 letters, digits, '-', '_' or '.'")
        }
        let hasKernel = values["kernel"] != nil || values["config"] != nil
        if !hasKernel, repeated["disk"] != nil {
            throw .invalidConfiguration(field: "option", value: "--disk", expected: "with --kernel or --config (else add drives through the API or --config-file)")
        }
        if !hasKernel, repeated["net"] != nil {
            throw .invalidConfiguration(field: "option", value: "--net", expected: "with --kernel or --config (with --config-file or the API, use network-interfaces)")
        }
        let firecrackerStyle = !hasKernel
        if values["no-api"] != nil {
            guard values["config-file"] != nil else {
                throw .invalidConfiguration(field: "option", value: "--no-api", expected: "with --config-file (without the API nothing could configure the VM)")
            }
            guard values["api-sock"] == nil else {
                throw .invalidConfiguration(field: "option", value: "--no-api", expected: "not with --api-sock")
            }
        }
        // Firecracker serves its default socket unless told otherwise.
        let socketPath = values["api-sock"] ?? (firecrackerStyle && values["no-api"] == nil ? defaultSocketPath : nil)
        var mode = APIMode(socketPath: socketPath, instanceID: instanceID, logPath: values["log-path"],
                           configuration: InstanceConfiguration(), bootsAtOnce: false)
        try applyProcessOptions(values, to: &mode)
        if let file = values["config-file"] {
            guard !hasKernel else {
                throw .invalidConfiguration(field: "option", value: "--config-file", expected: "without --kernel or --config (it holds the boot source)")
            }
            for flag in ["initrd", "cmdline", "cpus", "memory"] where values[flag] != nil {
                throw .invalidConfiguration(field: "option", value: "--\(flag)", expected: "not with --config-file (set it in the file)")
            }
            var base = VMConfiguration(kernelPath: "")
            try applyProcessSettings(values, to: &base)
            base.transport = try transport(values, configFile: nil, firecrackerStyle: true)
            let bytes: [UInt8]
            do {
                bytes = try OwnedFileDescriptor.readWholeFile(file)
            } catch {
                throw .readFile(role: "config file", path: file, cause: error)
            }
            guard bytes.count <= ConfigurationFile.maximumSize else {
                throw .invalidConfiguration(field: "config file", value: file, expected: "at most \(ConfigurationFile.maximumSize) bytes")
            }
            do {
                mode.configuration = try InstanceConfiguration.parseFirecrackerFile(bytes, base: base)
            } catch {
                throw .invalidConfiguration(field: "config file", value: file, expected: "Firecracker's layout: \(error.message)")
            }
            mode.bootsAtOnce = true
        } else if hasKernel {
            mode.configuration = InstanceConfiguration(try configuration(from: values, repeated: repeated))
            mode.bootsAtOnce = true
        } else {
            for flag in ["initrd", "cmdline"] where values[flag] != nil {
                throw .invalidConfiguration(field: "option", value: "--\(flag)", expected: "with --kernel (or set it with PUT /boot-source)")
            }
            var base = VMConfiguration(kernelPath: "")
            try applyProcessSettings(values, to: &base)
            base.transport = try transport(values, configFile: nil, firecrackerStyle: true)
            mode.configuration = InstanceConfiguration(base: base)
            if let text = values["cpus"] {
                guard let count = Int(text), (1...254).contains(count) else {
                    throw .invalidConfiguration(field: "cpus", value: text, expected: "a whole number from 1 to 254")
                }
                mode.configuration.machine.vcpuCount = count
            }
            if let text = values["memory"] {
                guard let bytes = MemorySize.parse(text), bytes % (1 << 20) == 0,
                      bytes >= VMConfiguration.minimumMemorySize, bytes <= VMConfiguration.maximumMemorySize else {
                    throw .invalidConfiguration(field: "memory", value: text, expected: "a whole number of MiB from 16M to 1T")
                }
                mode.configuration.machine.memorySizeMiB = bytes >> 20
            }
        }
        guard mode.socketPath != nil || mode.bootsAtOnce else {
            throw .invalidConfiguration(field: "option", value: "--no-api", expected: "with --config-file")
        }
        try applyMetadataOptions(values, to: &mode.configuration)
        return mode
    }

    /// Settings the API does not set: serial, console device, reboot action,
    /// KVM device, virtio-rng.
    static func applyProcessSettings(_ values: [String: String], to result: inout VMConfiguration) throws(VMMError) {
        if let text = values["console"] {
            guard let device = ConsoleKind(rawValue: text) else {
                throw .invalidConfiguration(field: "console", value: text, expected: "serial or virtio")
            }
            result.console = device
        }
        if values["rng"] != nil { result.entropyDevice = true }
        if let text = values["vsock"] { result.vsock = try VsockConfiguration.parse(text) }
        if let text = values["serial"] {
            guard let mode = SerialMode(argument: text) else {
                throw .invalidConfiguration(field: "serial", value: text, expected: "stdio, file:PATH or none")
            }
            result.serial = mode
        }
        if let text = values["on-reboot"] {
            guard let action = RebootAction(rawValue: text) else {
                throw .invalidConfiguration(field: "on-reboot", value: text, expected: "restart or exit")
            }
            result.onReboot = action
        }
        if let path = values["kvm-device"] { result.kvmDevicePath = path }
    }

    /// Builds the configuration from option values and the optional config file.
    static func configuration(from values: [String: String], repeated: [String: [String]] = [:]) throws(VMMError) -> VMConfiguration {
        let file = try values["config"].map { (path) throws(VMMError) in try ConfigurationFile.load(path: path) }
        guard let kernelPath = values["kernel"] ?? file?.kernel else {
            throw .invalidConfiguration(field: "kernel", value: "(none)", expected: "--kernel PATH or \"kernel\" in --config")
        }
        var result = VMConfiguration(kernelPath: kernelPath)
        result.initrdPath = values["initrd"] ?? file?.initrd
        result.commandLine = values["cmdline"] ?? file?.cmdline ?? VMConfiguration.defaultCommandLine
        if let text = values["cpus"] {
            guard let count = Int(text) else { throw .invalidConfiguration(field: "cpus", value: text, expected: "a whole number from 1 to 254") }
            result.cpuCount = count
        } else if let count = file?.cpus {
            result.cpuCount = count
        }
        if let text = values["memory"] ?? file?.memory {
            guard let bytes = MemorySize.parse(text) else {
                throw .invalidConfiguration(field: "memory", value: text, expected: "a size such as 512M, 2G or 1024 (MiB)")
            }
            result.memorySize = bytes
        }
        if let text = values["serial"] ?? file?.serial {
            guard let mode = SerialMode(argument: text) else {
                throw .invalidConfiguration(field: "serial", value: text, expected: "stdio, file:PATH or none")
            }
            result.serial = mode
        }
        if let text = values["console"] ?? file?.console {
            guard let device = ConsoleKind(rawValue: text) else {
                throw .invalidConfiguration(field: "console", value: text, expected: "serial or virtio")
            }
            result.console = device
        }
        if let text = values["on-reboot"] ?? file?.onReboot {
            guard let action = RebootAction(rawValue: text) else {
                throw .invalidConfiguration(field: "on-reboot", value: text, expected: "restart or exit")
            }
            result.onReboot = action
        }
        if let path = values["trace-exits"] {
            guard !path.isEmpty else { throw .invalidConfiguration(field: "trace-exits", value: path, expected: "a file path") }
            result.exitTracePath = path
        }
        if let disks = repeated["disk"] {
            result.disks = []
            for (index, text) in disks.enumerated() { result.disks.append(try DiskConfiguration.parse(text, index: index)) }
        } else if let fileDisks = file?.disks {
            result.disks = fileDisks
        }
        if let path = values["kvm-device"] { result.kvmDevicePath = path }
        if let specs = repeated["net"] {
            var interfaces: [VMM.NetworkInterfaceConfiguration] = []
            for (index, spec) in specs.enumerated() {
                interfaces.append(try VMM.NetworkInterfaceConfiguration.parse(spec, defaultID: "net\(index)"))
            }
            result.networkInterfaces = interfaces
        } else if let interfaces = file?.networkInterfaces {
            result.networkInterfaces = interfaces
        }
        result.entropyDevice = values["rng"] != nil || file?.rng == true
        result.transport = try transport(values, configFile: file?.transport, firecrackerStyle: false)
        if let text = values["vsock"] {
            result.vsock = try VsockConfiguration.parse(text)
        } else {
            result.vsock = file?.vsock
        }
        try result.validate()
        return result
    }

    /// The virtio transport: an explicit --transport wins; else --enable-pci
    /// selects PCI; else the --config file's "transport"; else virtio-mmio
    /// for a VM configured as Firecracker is (--config-file, or --api-sock
    /// without --kernel/--config), as Firecracker does without --enable-pci,
    /// and PCI for the rest (--kernel, --config, `swiftlet run`, swiftletd).
    static func transport(_ values: [String: String], configFile: String?, firecrackerStyle: Bool) throws(VMMError) -> VirtioTransportKind {
        if let text = values["transport"] {
            guard let kind = VirtioTransportKind(rawValue: text) else {
                throw .invalidConfiguration(field: "transport", value: text, expected: "pci or mmio")
            }
            return kind
        }
        if values["enable-pci"] != nil { return .pci }
        if let text = configFile {
            guard let kind = VirtioTransportKind(rawValue: text) else {
                throw .invalidConfiguration(field: "transport", value: text, expected: "pci or mmio (the --config key \"transport\")")
            }
            return kind
        }
        return firecrackerStyle ? .mmio : .pci
    }
}

extension String {
    fileprivate func padding(to width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}
