/// Numbers fixed by VirtIO 1.2 section 5.2 (block device).

/// Block device feature bits (5.2.3).
public enum BlockFeature {
    /// seg_max holds the most data segments in one request.
    public static let segmentMaximum: UInt64 = 1 << 2
    /// The device is read-only.
    public static let readOnly: UInt64 = 1 << 5
    /// blk_size holds the logical block size.
    public static let blockSize: UInt64 = 1 << 6
    /// The device honours VIRTIO_BLK_T_FLUSH.
    public static let flush: UInt64 = 1 << 9
    public static let discard: UInt64 = 1 << 13
    public static let writeZeroes: UInt64 = 1 << 14
}

/// Request types (the `type` field of the request header, 5.2.6).
public enum BlockRequestType {
    public static let read: UInt32 = 0
    public static let write: UInt32 = 1
    public static let flush: UInt32 = 4
    public static let getID: UInt32 = 8
    public static let getLifetime: UInt32 = 10
    public static let discard: UInt32 = 11
    public static let writeZeroes: UInt32 = 13
    public static let secureErase: UInt32 = 14

    /// A short name for logs and errors.
    public static func name(_ type: UInt32) -> String {
        switch type {
        case read: "IN"
        case write: "OUT"
        case flush: "FLUSH"
        case getID: "GET_ID"
        case getLifetime: "GET_LIFETIME"
        case discard: "DISCARD"
        case writeZeroes: "WRITE_ZEROES"
        case secureErase: "SECURE_ERASE"
        default: "type \(type)"
        }
    }
}

/// The status byte the device writes last (5.2.6).
public enum BlockStatus {
    public static let ok: UInt8 = 0
    public static let ioError: UInt8 = 1
    public static let unsupported: UInt8 = 2
}

/// Sizes and limits of the block protocol and of this device.
public enum BlockLimits {
    /// Requests address the disk in 512-byte sectors whatever blk_size says.
    public static let sectorSize: UInt64 = 512
    /// struct virtio_blk_req's header: type, reserved, sector.
    public static let headerSize: UInt64 = 16
    /// GET_ID answers with this many bytes (unterminated when the id is 20 long).
    public static let identifierSize = 20
    /// struct virtio_blk_discard_write_zeroes: sector, num_sectors, flags.
    public static let segmentSize: UInt64 = 16
    /// Bit 0 of a discard/write-zeroes segment's flags: unmap (write zeroes only).
    public static let unmapFlag: UInt32 = 1
    /// The queue size offered to the driver.
    public static let queueSize: UInt16 = 256
    /// seg_max: data buffers per request. Linux adds the header and the status.
    public static let maximumSegments: UInt32 = UInt32(queueSize) - 2
    /// Discard and write-zeroes ranges per request, and sectors per range.
    public static let maximumDiscardSegments: UInt32 = 32
    public static let maximumDiscardSectors: UInt32 = UInt32.max
    public static let maximumWriteZeroesSegments: UInt32 = 32
    public static let maximumWriteZeroesSectors: UInt32 = UInt32.max
}

/// Offsets in struct virtio_blk_config (5.2.4).
enum BlockConfigurationOffset {
    static let capacity = 0
    static let sizeMax = 8
    static let segmentMax = 12
    static let blockSize = 20
    static let maximumDiscardSectors = 36
    static let maximumDiscardSegments = 40
    static let discardSectorAlignment = 44
    static let maximumWriteZeroesSectors = 48
    static let maximumWriteZeroesSegments = 52
    static let writeZeroesMayUnmap = 56
    /// The structure through secure_erase_sector_alignment.
    static let size = 72
}
