/// Numbers fixed by the VirtIO 1.2 specification.

/// Device IDs (section 5): the PCI device ID is 0x1040 + this value.
public enum VirtioDeviceType: UInt16, Sendable, CustomStringConvertible {
    case network = 1
    case block = 2
    case console = 3
    case entropy = 4
    case socket = 19

    public var description: String {
        switch self {
        case .network: "virtio-net"
        case .block: "virtio-blk"
        case .console: "virtio-console"
        case .entropy: "virtio-rng"
        case .socket: "virtio-vsock"
        }
    }
}

/// Device-independent feature bits (section 6).
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28
    public static let eventIndex: UInt64 = 1 << 29
    public static let version1: UInt64 = 1 << 32
    public static let accessPlatform: UInt64 = 1 << 33
    public static let ringPacked: UInt64 = 1 << 34
}

/// Device status bits (section 2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt8 = 1
    public static let driver: UInt8 = 2
    public static let driverOK: UInt8 = 4
    public static let featuresOK: UInt8 = 8
    public static let deviceNeedsReset: UInt8 = 64
    public static let failed: UInt8 = 128
}
