import ControlAPI
import HostSystem
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
    }

    /// Firecracker's default instance id.
    public static let defaultInstanceID = "anonymous-instance"

    /// The options that take a value, with their help text.
    static let options: [(name: String, value: String, help: String)] = [
        ("kernel", "PATH", "Kernel image: an uncompressed ELF vmlinux (booted through its PVH entry) or a bzImage."),
        ("initrd", "PATH", "Initial ramdisk (a cpio archive, optionally compressed)."),
        ("cmdline", "TEXT", "Kernel command line (default: \"\(VMConfiguration.defaultCommandLine)\")."),
        ("cpus", "N", "Number of vCPUs, 1 to 254 and at most what KVM allows (default 1)."),
        ("memory", "SIZE", "Guest RAM: 512M, 2G, or a plain number of MiB (default 128M)."),
        ("serial", "MODE", "COM1: stdio (interactive, Ctrl-A x quits), file:PATH, or none (default stdio)."),
        ("console", "DEVICE", "The guest's console device: serial (COM1, ttyS0) or virtio (virtio-console, hvc0; pass console=hvc0 in --cmdline). It uses what --serial names (default serial)."),
        ("disk", "SPEC", "A virtio-blk disk, repeatable: path=PATH[,readonly=on|off][,id=ID][,direct=on|off]. PATH is a raw image (a multiple of 512 bytes); id (GET_ID, 1-20 of A-Z a-z 0-9 - _ .) defaults to disk0, disk1...; direct=on opens it O_DIRECT."),
        ("on-reboot", "ACTION", "When the guest reboots: restart it, or exit with status 2 (default exit)."),
        ("config", "FILE", "JSON file with the same settings: \(ConfigurationFile.knownKeys.joined(separator: ", ")). Flags given as well override it."),
        ("kvm-device", "PATH", "The KVM device node (default /dev/kvm)."),
        ("api-sock", "PATH", "Serve the control API (HTTP/1.1, Firecracker's resources) on this Unix socket, mode 0600. Without a kernel, wait for PUT /boot-source and InstanceStart."),
        ("id", "ID", "Instance id reported by GET / (default \(defaultInstanceID))."),
        ("log-path", "PATH", "Append log lines (lifecycle, API requests that change state) to this file."),
        ("config-file", "FILE", "Firecracker-layout JSON (boot-source, machine-config, drives, network-interfaces, entropy, vsock, mmds-config): boot it at once."),
        ("vsock", "SPEC", "A virtio-vsock device, Firecracker's hybrid model: cid=N,uds=PATH. The VMM listens on the Unix socket PATH (which must not exist; removed at exit): a host process connects, writes \"CONNECT <port>\\n\" and reads \"OK <host port>\\n\" once the guest accepts. Guest connections to CID 2 port P go to PATH_P. N is the guest's CID, 3 to 4294967294."),
        ("net", "SPEC", "A virtio-net interface on a tap (repeatable): tap=NAME (created if missing; needs CAP_NET_ADMIN unless made for you) or tap-fd=N (an open tap with vnet headers), then optionally ,mac=52:54:00:12:34:56 (default: derived from id and tap), ,id=ID (default net0, net1, ...), ,offloads=off."),
        ("transport", "KIND", "How the guest reaches the virtio devices: pci (virtio-pci, MSI-X) or mmio (virtio-mmio pages announced on the kernel command line as virtio_mmio.device= and in the ACPI DSDT, at most \(VirtioTransportKind.maximumMMIODevices) devices; the guest may boot with pci=off). Default: mmio when configured as Firecracker is (--config-file, or --api-sock without --kernel/--config) unless --enable-pci; else pci."),
    ] + metadataOptions

    /// Options that may be given more than once, each adding a device.
    static let repeatableOptions: Set<String> = ["disk", "net"]

    /// The options that take no value (on when given), with their help text.
    static let switches: [(name: String, help: String)] = [
        ("rng", "Add a virtio-rng device fed from the host's getrandom; the guest sees /dev/hwrng."),
        ("enable-pci", "Firecracker's switch: put the virtio devices on PCI (--transport pci); an explicit --transport wins."),
    ]

    public static let versionNumber = "0.1.0"
    public static let version = "swiftlet-vmm \(versionNumber)"

    public static let help: String = {
        var text = """
            USAGE: swiftlet-vmm --kernel PATH [options]
                   swiftlet-vmm --api-sock PATH [--id ID] [--log-path PATH] [--config-file FILE] [options]

            Runs one KVM virtual machine: boots a Linux kernel (ELF vmlinux through its
            PVH entry, or a bzImage through the 64-bit boot protocol) on /dev/kvm with an
            8250 serial console and ACPI power-off.

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
        let apiOptions = ["api-sock", "id", "log-path", "config-file", "metadata", "mmds-size-limit"]
        guard apiOptions.contains(where: { values[$0] != nil }) else {
            return .run(try configuration(from: values, repeated: repeated))
        }
        return .serve(try apiMode(from: values, repeated: repeated))
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
        var mode = APIMode(socketPath: values["api-sock"], instanceID: instanceID, logPath: values["log-path"],
                           configuration: InstanceConfiguration(), bootsAtOnce: false)
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
            guard mode.socketPath != nil else {
                throw .invalidConfiguration(field: "kernel", value: "(none)", expected: "--kernel, --config, --config-file or --api-sock")
            }
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
            throw .invalidConfiguration(field: "option", value: "--id/--log-path", expected: "with --api-sock or --config-file")
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
