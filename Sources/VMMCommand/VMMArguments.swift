import VMM

/// swiftlet-vmm's command line. Parsed by hand rather than with
/// swift-argument-parser, which links Foundation: the VMM runs once per VM,
/// and its resident memory and start-up time are product features.
public enum VMMArguments {
    /// What the command line asks for.
    public enum Action: Equatable, Sendable {
        case run(VMConfiguration)
        case help
        case version
    }

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
    ]

    public static let version = "swiftlet-vmm 0.1.0"

    public static let help: String = {
        var text = """
            USAGE: swiftlet-vmm --kernel PATH [options]

            Runs one KVM virtual machine: boots a Linux kernel (ELF vmlinux through its
            PVH entry, or a bzImage through the 64-bit boot protocol) on /dev/kvm with an
            8250 serial console and ACPI power-off.

            OPTIONS:

            """
        for option in options {
            let flag = "  --\(option.name) \(option.value)"
            text += flag.padding(to: 24) + option.help + "\n"
        }
        text += "  -h, --help".padding(to: 24) + "Show this help.\n"
        text += "  --version".padding(to: 24) + "Show the version.\n"
        text += """

            EXIT STATUS:
              0  the guest powered off (or Ctrl-A x)
              1  bad input or a host error: one line on stderr names the bad value
              2  the guest rebooted and --on-reboot is exit
              3  the guest crashed (triple fault, emulation failure); registers on stderr
              4  SIGINT, SIGTERM or SIGHUP stopped the VM

            EXAMPLE:
              swiftlet-vmm --kernel vmlinux --initrd initrd.cpio.gz --cpus 2 --memory 256M

            """
        return text
    }()

    /// Parses `arguments` (without the program name). Accepts `--name value`
    /// and `--name=value`; every problem is a VMMError naming the argument.
    public static func parse(_ arguments: [String]) throws(VMMError) -> Action {
        var values: [String: String] = [:]
        var disks: [String] = []
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
            guard options.contains(where: { $0.name == name }) else {
                throw .invalidConfiguration(field: "option", value: "--\(name)",
                                            expected: "one of " + options.map { "--\($0.name)" }.joined(separator: ", "))
            }
            if value == nil {
                guard index < arguments.count else {
                    throw .invalidConfiguration(field: "option", value: "--\(name)", expected: "a value after it")
                }
                value = arguments[index]
                index += 1
            }
            if name == "disk", let value {
                disks.append(value)
                continue
            }
            guard values[name] == nil else {
                throw .invalidConfiguration(field: "option", value: "--\(name)", expected: "at most once")
            }
            values[name] = value
        }
        return .run(try configuration(from: values, disks: disks))
    }

    /// Builds the configuration from option values and the optional config file.
    /// `--disk` values, if any, replace the config file's "disks".
    static func configuration(from values: [String: String], disks: [String] = []) throws(VMMError) -> VMConfiguration {
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
        if !disks.isEmpty {
            result.disks = []
            for (index, text) in disks.enumerated() { result.disks.append(try DiskConfiguration.parse(text, index: index)) }
        } else if let fileDisks = file?.disks {
            result.disks = fileDisks
        }
        if let path = values["kvm-device"] { result.kvmDevicePath = path }
        try result.validate()
        return result
    }
}

extension String {
    fileprivate func padding(to width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}
