/// The virtio-mmio register file (VirtIO 1.2 section 4.2.2, register layout
/// version 2, the non-legacy one): 32-bit registers from offset 0, the
/// device-specific configuration from 0x100, one 4 KiB page per device.
public enum VirtioMMIOLayout {
    /// "virt" in little-endian ASCII.
    public static let magicValue: UInt32 = 0x7472_6976
    /// Version 2: the modern interface (version 1 is legacy, refused here).
    public static let version: UInt32 = 2
    /// "SWFT" in little-endian ASCII; drivers do not interpret it.
    public static let vendorID: UInt32 = 0x5446_5753
    /// The page each device decodes (what `virtio_mmio.device=4K@...` announces).
    public static let size: UInt64 = 0x1000
    public static let configurationOffset: UInt64 = 0x100

    /// Register offsets (R: read-only, W: write-only, RW).
    public enum Register {
        public static let magicValue: UInt64 = 0x000 // R
        public static let version: UInt64 = 0x004 // R
        public static let deviceID: UInt64 = 0x008 // R
        public static let vendorID: UInt64 = 0x00C // R
        public static let deviceFeatures: UInt64 = 0x010 // R
        public static let deviceFeaturesSelect: UInt64 = 0x014 // W
        public static let driverFeatures: UInt64 = 0x020 // W
        public static let driverFeaturesSelect: UInt64 = 0x024 // W
        public static let queueSelect: UInt64 = 0x030 // W
        public static let queueSizeMaximum: UInt64 = 0x034 // R
        public static let queueSize: UInt64 = 0x038 // W
        public static let queueReady: UInt64 = 0x044 // RW
        public static let queueNotify: UInt64 = 0x050 // W
        public static let interruptStatus: UInt64 = 0x060 // R
        public static let interruptAcknowledge: UInt64 = 0x064 // W
        public static let status: UInt64 = 0x070 // RW
        public static let queueDescriptorLow: UInt64 = 0x080 // W
        public static let queueDescriptorHigh: UInt64 = 0x084 // W
        public static let queueDriverLow: UInt64 = 0x090 // W
        public static let queueDriverHigh: UInt64 = 0x094 // W
        public static let queueDeviceLow: UInt64 = 0x0A0 // W
        public static let queueDeviceHigh: UInt64 = 0x0A4 // W
        public static let sharedMemorySelect: UInt64 = 0x0AC // W
        public static let sharedMemoryLengthLow: UInt64 = 0x0B0 // R
        public static let sharedMemoryLengthHigh: UInt64 = 0x0B4 // R
        public static let sharedMemoryBaseLow: UInt64 = 0x0B8 // R
        public static let sharedMemoryBaseHigh: UInt64 = 0x0BC // R
        public static let queueReset: UInt64 = 0x0C0 // RW (with VIRTIO_F_RING_RESET, never offered)
        public static let configurationGeneration: UInt64 = 0x0FC // R
    }

    /// The width of every register access below `configurationOffset`
    /// (4.2.2.2: 32-bit wide and aligned); other accesses there are ignored.
    public static let registerAccessSize = 4

    /// InterruptStatus bits.
    public static let interruptUsedBuffer: UInt32 = 1
    public static let interruptConfigurationChange: UInt32 = 2
}
