import RateLimiter

/// Where the guest's COM1 output goes, and where its input comes from.
public enum SerialMode: Equatable, Sendable, CustomStringConvertible {
    /// The terminal: output to stdout, input from stdin (raw mode on a TTY).
    case stdio
    /// Output appended to a file; no input.
    case file(path: String)
    /// The UART exists but goes nowhere.
    case none

    /// Parses `stdio`, `file:PATH` or `none`.
    public init?(argument: String) {
        switch argument {
        case "stdio": self = .stdio
        case "none", "off": self = .none
        default:
            guard argument.hasPrefix("file:"), argument.count > 5 else { return nil }
            self = .file(path: String(argument.dropFirst(5)))
        }
    }

    public var description: String {
        switch self {
        case .stdio: "stdio"
        case let .file(path): "file:\(path)"
        case .none: "none"
        }
    }
}

/// Which device is the guest's console (it gets what `SerialMode` names).
public enum ConsoleKind: String, Equatable, Sendable, CaseIterable {
    /// The 8250 UART at COM1 (ttyS0).
    case serial
    /// virtio-console (hvc0); COM1 stays, writing to the same place, for early messages.
    case virtio
}

/// What a guest reboot does.
public enum RebootAction: String, Equatable, Sendable, CaseIterable {
    /// Build the VM afresh and boot again.
    case restart
    /// Stop the VMM with `VMMExitStatus.guestRebooted`.
    case exit
}

/// Everything needed to build one VM.
public struct VMConfiguration: Equatable, Sendable {
    public static let defaultCommandLine = "console=ttyS0 reboot=k panic=-1"
    public static let defaultMemorySize: UInt64 = 128 << 20
    /// Below this a kernel, its tables and a stack do not fit.
    public static let minimumMemorySize: UInt64 = 16 << 20
    /// The largest guest this layout supports (RAM above 4 GiB included).
    public static let maximumMemorySize: UInt64 = 1 << 40
    /// The largest kernel file read (a vmlinux with debug information
    /// included); a bigger one, or a FIFO or device, is refused before
    /// anything is allocated, since API callers name these files.
    public static let maximumKernelSize: UInt64 = 512 << 20
    /// The largest initrd file read, whatever the guest's memory (which
    /// bounds it further: an initrd must fit in guest RAM).
    public static let maximumInitrdSize: UInt64 = 2 << 30

    public var kernelPath: String
    public var initrdPath: String?
    public var commandLine: String
    public var cpuCount: Int
    public var memorySize: UInt64
    public var serial: SerialMode
    public var onReboot: RebootAction
    /// Which device carries the console.
    public var console: ConsoleKind = .serial
    /// virtio-net interfaces, in device order.
    public var networkInterfaces: [NetworkInterfaceConfiguration] = []
    /// virtio-blk disks, in device order (the guest's vda, vdb...).
    public var disks: [DiskConfiguration] = []
    /// The KVM device node (a different path helps in containers and tests).
    public var kvmDevicePath = "/dev/kvm"
    /// A virtio-rng device (`--rng`), fed from the host's getrandom.
    public var entropyDevice = false
    /// Its rate limiter (Firecracker's entropy `rate_limiter`).
    public var entropyRateLimiter = RateLimiterConfiguration.unlimited
    /// Firecracker's boot-timer device at `Layout.bootTimerStart` (`--boot-timer`).
    public var bootTimer = false
    /// Guest RAM advised MADV_HUGEPAGE (Firecracker's `huge_pages: "Transparent"`).
    public var transparentHugePages = false
    /// How the guest reaches the virtio devices (`--transport`, `--enable-pci`).
    public var transport: VirtioTransportKind = .pci
    /// A virtio-vsock device with Firecracker's Unix-socket backend (`--vsock`).
    public var vsock: VsockConfiguration?
    /// MMDS on the listed network interfaces (PUT /mmds/config, `mmds-config`).
    public var metadataService: MetadataServiceAttachment?
    /// Record the pages guest and devices write, for diff snapshots
    /// (Firecracker's `track_dirty_pages`): KVM's dirty log on every memory
    /// slot plus a bitmap of the VMM's own writes.
    public var trackDirtyPages = false
    /// `--trace-exits FILE`: write where the run's time went when it stops (docs/performance.md).
    public var exitTracePath: String?

    public init(
        kernelPath: String, initrdPath: String? = nil, commandLine: String = VMConfiguration.defaultCommandLine,
        cpuCount: Int = 1, memorySize: UInt64 = VMConfiguration.defaultMemorySize,
        serial: SerialMode = .stdio, onReboot: RebootAction = .exit
    ) {
        self.kernelPath = kernelPath
        self.initrdPath = initrdPath
        self.commandLine = commandLine
        self.cpuCount = cpuCount
        self.memorySize = memorySize
        self.serial = serial
        self.onReboot = onReboot
    }

    /// Checks values that do not need the host; `maxVCPUs` comes from KVM.
    public func validate(maxVCPUs: Int = 254) throws(VMMError) {
        let limit = min(maxVCPUs, 254)
        guard (1...limit).contains(cpuCount) else {
            throw .invalidConfiguration(field: "cpus", value: "\(cpuCount)", expected: "1 to \(limit)")
        }
        guard memorySize >= Self.minimumMemorySize, memorySize <= Self.maximumMemorySize else {
            throw .invalidConfiguration(field: "memory", value: MemorySize.format(memorySize),
                                        expected: "\(MemorySize.format(Self.minimumMemorySize)) to \(MemorySize.format(Self.maximumMemorySize))")
        }
        guard memorySize % 4096 == 0 else {
            throw .invalidConfiguration(field: "memory", value: "\(memorySize) bytes", expected: "a multiple of 4 KiB")
        }
        try NetworkInterfaceConfiguration.validate(networkInterfaces)
        guard !kernelPath.isEmpty else {
            throw .invalidConfiguration(field: "kernel", value: "(empty)", expected: "the path of a vmlinux or bzImage")
        }
        try DiskConfiguration.validate(disks)
        try vsock?.validate()
    }
}

/// Memory sizes as users write them: `512M`, `1G`, `1.5G`, `65536K`, or a
/// plain number of MiB.
public enum MemorySize {
    public static func parse(_ text: String) -> UInt64? {
        let trimmed = text.trimmingSuffix("iB").trimmingSuffix("B")
        guard let last = trimmed.last else { return nil }
        let units: [Character: UInt64] = ["K": 1 << 10, "k": 1 << 10, "M": 1 << 20, "m": 1 << 20, "G": 1 << 30, "g": 1 << 30, "T": 1 << 40, "t": 1 << 40]
        let (number, multiplier) = units[last].map { (String(trimmed.dropLast()), $0) } ?? (String(trimmed), 1 << 20)
        if let whole = UInt64(number) {
            let (product, overflow) = whole.multipliedReportingOverflow(by: multiplier)
            return overflow ? nil : product
        }
        guard let fractional = Double(number), fractional >= 0, fractional.isFinite else { return nil }
        let bytes = fractional * Double(multiplier)
        guard bytes < 1.8e19 else { return nil }
        return UInt64(bytes)
    }

    /// `128 MiB`, `3 GiB`, or bytes when not a whole number of KiB.
    public static func format(_ bytes: UInt64) -> String {
        for (unit, shift) in [("TiB", UInt64(40)), ("GiB", 30), ("MiB", 20), ("KiB", 10)] where bytes >= (1 << shift) && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift) \(unit)"
        }
        return "\(bytes) bytes"
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> Substring {
        hasSuffix(suffix) ? dropLast(suffix.count)[...] : self[...]
    }
}

extension Substring {
    fileprivate func trimmingSuffix(_ suffix: String) -> Substring {
        hasSuffix(suffix) ? dropLast(suffix.count) : self
    }
}
