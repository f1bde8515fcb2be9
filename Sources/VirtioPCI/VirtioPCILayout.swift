import PCI
import Virtio

/// Numbers of the virtio-pci modern interface (VirtIO 1.2 section 4.1) and
/// where this transport puts its structures: everything in one 32 KiB
/// memory BAR (BAR 0).
///
///     0x0000  common configuration (0x3C bytes used)
///     0x1000  ISR status (1 byte)
///     0x2000  device-specific configuration (up to 4 KiB)
///     0x3000  notifications: queue n at 0x3000 + 4 n
///     0x4000  MSI-X table (16 bytes per vector)
///     0x6000  MSI-X pending-bit array
public enum VirtioPCILayout {
    public static let vendorID: UInt16 = 0x1AF4
    /// Modern (non-transitional) devices: 0x1040 + the VirtIO device ID.
    public static let deviceIDBase: UInt16 = 0x1040
    /// Non-transitional devices have revision 1 or higher (4.1.2.1).
    public static let revisionID: UInt8 = 1
    /// Subsystem IDs of 0x40 and up say "not transitional"; QEMU uses 0x1100.
    public static let subsystemID: UInt16 = 0x1100

    public static let bar = 0
    public static let barSize: UInt64 = 0x8000
    public static let commonOffset: UInt64 = 0x0000
    public static let commonLength: UInt64 = 0x3C
    public static let isrOffset: UInt64 = 0x1000
    public static let deviceConfigurationOffset: UInt64 = 0x2000
    public static let deviceConfigurationLength: UInt64 = 0x1000
    public static let notifyOffset: UInt64 = 0x3000
    public static let notifyLength: UInt64 = 0x1000
    /// Bytes between two queues' notification addresses.
    public static let notifyOffsetMultiplier: UInt64 = 4
    /// The width of the write the driver makes to notify (a 16-bit queue
    /// index); the ioeventfd matches writes of this length.
    public static let notifyWriteLength: UInt32 = 2
    public static let msixTableOffset: UInt64 = 0x4000
    public static let msixPBAOffset: UInt64 = 0x6000
    /// The table region holds this many vectors.
    public static let maximumVectors = Int((msixPBAOffset - msixTableOffset) / 16)
    /// The notification region holds this many queues.
    public static let maximumQueues = Int(notifyLength / notifyOffsetMultiplier)

    /// virtio_pci_cap.cfg_type values.
    public enum CapabilityType: UInt8 {
        case common = 1, notify = 2, isr = 3, device = 4, pciConfiguration = 5
    }

    /// PCI class code (base class, subclass, interface), as QEMU reports them.
    public static func classCode(for type: VirtioDeviceType) -> UInt32 {
        switch type {
        case .network: 0x02_00_00 // Ethernet controller
        case .block: 0x01_80_00 // other mass storage controller
        case .console: 0x07_80_00 // other communication controller
        case .entropy: 0xFF_00_00 // unassigned class
        case .socket: 0x07_80_00 // other communication controller (QEMU's vhost-vsock-pci)
        }
    }

    /// The offsets of the common configuration fields (struct virtio_pci_common_cfg).
    enum Common {
        static let deviceFeatureSelect = 0x00 // u32
        static let deviceFeature = 0x04 // u32, read-only
        static let driverFeatureSelect = 0x08 // u32
        static let driverFeature = 0x0C // u32
        static let configMSIXVector = 0x10 // u16
        static let numberOfQueues = 0x12 // u16, read-only
        static let deviceStatus = 0x14 // u8
        static let configGeneration = 0x15 // u8, read-only
        static let queueSelect = 0x16 // u16
        static let queueSize = 0x18 // u16
        static let queueMSIXVector = 0x1A // u16
        static let queueEnable = 0x1C // u16
        static let queueNotifyOffset = 0x1E // u16, read-only
        static let queueDescriptor = 0x20 // u64
        static let queueDriver = 0x28 // u64
        static let queueDevice = 0x30 // u64
        static let queueNotifyData = 0x38 // u16, read-only (NOTIFICATION_DATA is not offered)
        static let queueReset = 0x3A // u16 (RING_RESET is not offered)

        /// Every field as (offset, width), in order.
        static let fields: [(offset: Int, width: Int)] = [
            (deviceFeatureSelect, 4), (deviceFeature, 4), (driverFeatureSelect, 4), (driverFeature, 4),
            (configMSIXVector, 2), (numberOfQueues, 2), (deviceStatus, 1), (configGeneration, 1),
            (queueSelect, 2), (queueSize, 2), (queueMSIXVector, 2), (queueEnable, 2), (queueNotifyOffset, 2),
            (queueDescriptor, 8), (queueDriver, 8), (queueDevice, 8), (queueNotifyData, 2), (queueReset, 2),
        ]
    }

    /// VIRTIO_MSI_NO_VECTOR.
    public static let noVector: UInt16 = 0xFFFF

    /// ISR status bits.
    public static let isrQueue: UInt8 = 1
    public static let isrConfiguration: UInt8 = 2
}
