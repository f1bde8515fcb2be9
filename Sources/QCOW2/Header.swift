/// A qcow2 header (versions 2 and 3), its extensions and backing-file name,
/// parsed from the image's first cluster and checked field by field.
public struct QCOW2Header: Equatable, Sendable {
    public static let magic: UInt32 = 0x5146_49fb  // "QFI\xfb"
    /// Bytes of a version 2 header; version 3 adds feature bits and more.
    static let version2Length = 72
    static let version3MinimumLength = 104

    // Incompatible feature bits.
    public static let dirtyBit: UInt64 = 1 << 0
    public static let corruptBit: UInt64 = 1 << 1
    public static let externalDataFileBit: UInt64 = 1 << 2
    public static let compressionTypeBit: UInt64 = 1 << 3
    public static let extendedL2Bit: UInt64 = 1 << 4
    static let knownIncompatible: UInt64 = dirtyBit | corruptBit | externalDataFileBit | compressionTypeBit | extendedL2Bit
    // Compatible feature bits.
    public static let lazyRefcountsBit: UInt64 = 1 << 0

    // Header extension types.
    static let extensionEnd: UInt32 = 0
    static let extensionBackingFormat: UInt32 = 0xe279_2aca
    static let extensionExternalDataFile: UInt32 = 0x4441_5441

    /// QEMU's own limits (QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE): larger
    /// tables are refused before they are allocated.
    public static let maximumL1Bytes: UInt64 = 32 << 20
    public static let maximumRefcountTableBytes: UInt64 = 8 << 20
    /// QCOW_MAX_BACKING_FILE_NAME_LENGTH less the terminator.
    static let maximumBackingNameLength: UInt32 = 1023

    public var version: UInt32
    public var backingFileOffset: UInt64
    public var backingFileSize: UInt32
    public var clusterBits: UInt32
    public var size: UInt64
    public var encryptionMethod: UInt32
    public var l1Size: UInt32
    public var l1TableOffset: UInt64
    public var refcountTableOffset: UInt64
    public var refcountTableClusters: UInt32
    public var snapshotCount: UInt32
    public var snapshotsOffset: UInt64
    public var incompatibleFeatures: UInt64
    public var compatibleFeatures: UInt64
    public var autoclearFeatures: UInt64
    public var refcountOrder: UInt32
    public var headerLength: UInt32
    public var compressionType: UInt8
    /// The backing file's name as stored (relative to the image's folder unless absolute).
    public var backingFile: String?
    /// The backing format header extension ("raw", "qcow2"...).
    public var backingFormat: String?

    public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }
    public var hasLazyRefcounts: Bool { compatibleFeatures & Self.lazyRefcountsBit != 0 }
    public var isDirty: Bool { incompatibleFeatures & Self.dirtyBit != 0 }
    public var isMarkedCorrupt: Bool { incompatibleFeatures & Self.corruptBit != 0 }

    /// How many bytes `parse` needs to find the cluster size.
    public static let fixedFieldsLength = version3MinimumLength

    /// Parses the header from the start of the image: `bytes` holds the
    /// first cluster (or the whole file if shorter). Throws on anything a
    /// reader could misinterpret.
    public static func parse(_ bytes: [UInt8], path: String) throws(QCOW2Error) -> QCOW2Header {
        guard bytes.count >= 4 else { throw .truncated(path: path, offset: 0, length: UInt64(version2Length)) }
        guard bytes.bigEndian32(at: 0) == magic else { throw .badMagic(path: path) }
        guard bytes.count >= version2Length else { throw .truncated(path: path, offset: 0, length: UInt64(version2Length)) }
        let version = bytes.bigEndian32(at: 4)
        guard version == 2 || version == 3 else { throw .unsupportedVersion(path: path, version: version) }
        var header = QCOW2Header(
            version: version,
            backingFileOffset: bytes.bigEndian64(at: 8),
            backingFileSize: bytes.bigEndian32(at: 16),
            clusterBits: bytes.bigEndian32(at: 20),
            size: bytes.bigEndian64(at: 24),
            encryptionMethod: bytes.bigEndian32(at: 32),
            l1Size: bytes.bigEndian32(at: 36),
            l1TableOffset: bytes.bigEndian64(at: 40),
            refcountTableOffset: bytes.bigEndian64(at: 48),
            refcountTableClusters: bytes.bigEndian32(at: 56),
            snapshotCount: bytes.bigEndian32(at: 60),
            snapshotsOffset: bytes.bigEndian64(at: 64),
            incompatibleFeatures: 0, compatibleFeatures: 0, autoclearFeatures: 0,
            refcountOrder: 4, headerLength: UInt32(version2Length), compressionType: 0)
        // 512-byte to 2 MiB clusters, as QEMU accepts.
        guard (9...21).contains(header.clusterBits) else {
            throw .invalidHeader(path: path, reason: "cluster_bits \(header.clusterBits) is not between 9 and 21")
        }
        if version == 3 {
            guard bytes.count >= version3MinimumLength else {
                throw .truncated(path: path, offset: 0, length: UInt64(version3MinimumLength))
            }
            header.incompatibleFeatures = bytes.bigEndian64(at: 72)
            header.compatibleFeatures = bytes.bigEndian64(at: 80)
            header.autoclearFeatures = bytes.bigEndian64(at: 88)
            header.refcountOrder = bytes.bigEndian32(at: 96)
            header.headerLength = bytes.bigEndian32(at: 100)
            guard header.headerLength >= UInt32(version3MinimumLength), header.headerLength % 8 == 0,
                  UInt64(header.headerLength) <= header.clusterSize else {
                throw .invalidHeader(path: path, reason: "header_length \(header.headerLength) is not a multiple of 8 between 104 and the cluster size")
            }
            guard Int(header.headerLength) <= bytes.count else {
                throw .truncated(path: path, offset: 0, length: UInt64(header.headerLength))
            }
            if header.headerLength > UInt32(version3MinimumLength) { header.compressionType = bytes[version3MinimumLength] }
        }
        guard header.refcountOrder <= 6 else {
            throw .invalidHeader(path: path, reason: "refcount_order \(header.refcountOrder) is above 6")
        }
        guard header.encryptionMethod == 0 else { throw .unsupportedFeature(path: path, feature: "encryption") }
        let unknown = header.incompatibleFeatures & ~knownIncompatible
        guard unknown == 0 else { throw .unknownIncompatibleFeatures(path: path, bits: unknown) }
        if header.incompatibleFeatures & externalDataFileBit != 0 {
            throw .unsupportedFeature(path: path, feature: "an external data file")
        }
        if header.incompatibleFeatures & extendedL2Bit != 0 {
            throw .unsupportedFeature(path: path, feature: "extended L2 entries (subclusters)")
        }
        let compressionBit = header.incompatibleFeatures & compressionTypeBit != 0
        if compressionBit || header.compressionType != 0 {
            guard compressionBit, header.compressionType == 0 else {
                throw .unsupportedCompressionType(path: path, type: header.compressionType)
            }
        }
        try header.parseExtensions(bytes, path: path)
        try header.parseBackingName(bytes, path: path)
        return header
    }

    /// Walks the header extensions between the header and the backing file
    /// name (or the end of the first cluster); only the backing format is kept.
    /// Version 2 images have them too (after the 72-byte header), as QEMU writes and reads them.
    mutating func parseExtensions(_ bytes: [UInt8], path: String) throws(QCOW2Error) {
        var end = UInt64(min(UInt64(bytes.count), clusterSize))
        if backingFileOffset > UInt64(headerLength), backingFileOffset < end { end = backingFileOffset }
        var position = UInt64(headerLength)
        while position + 8 <= end {
            let type = bytes.bigEndian32(at: Int(position))
            let length = UInt64(bytes.bigEndian32(at: Int(position) + 4))
            if type == Self.extensionEnd { return }
            let dataStart = position + 8
            guard length <= end - dataStart else {
                throw .invalidHeader(path: path, reason: "header extension 0x\(String(type, radix: 16)) runs past the first cluster")
            }
            if type == Self.extensionBackingFormat {
                let data = bytes[Int(dataStart)..<Int(dataStart + length)]
                backingFormat = String(decoding: data, as: UTF8.self)
            }
            position = dataStart + roundUp(length, to: 8)
        }
    }

    mutating func parseBackingName(_ bytes: [UInt8], path: String) throws(QCOW2Error) {
        guard backingFileOffset != 0 else { return }
        guard backingFileSize > 0, backingFileSize <= Self.maximumBackingNameLength else {
            throw .invalidHeader(path: path, reason: "backing file name of \(backingFileSize) bytes (1 to 1023 allowed)")
        }
        let (end, overflow) = backingFileOffset.addingReportingOverflow(UInt64(backingFileSize))
        guard !overflow, end <= clusterSize else {
            throw .invalidHeader(path: path, reason: "backing file name does not lie in the first cluster")
        }
        guard end <= UInt64(bytes.count) else { throw .truncated(path: path, offset: backingFileOffset, length: UInt64(backingFileSize)) }
        backingFile = String(decoding: bytes[Int(backingFileOffset)..<Int(end)], as: UTF8.self)
    }

    /// The header fields as bytes (the fixed part: 72 bytes for version 2,
    /// `headerLength` for version 3), for `create` and for rewriting features.
    func encodedFixedFields() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: version == 2 ? Self.version2Length : Int(headerLength))
        bytes.storeBigEndian32(Self.magic, at: 0)
        bytes.storeBigEndian32(version, at: 4)
        bytes.storeBigEndian64(backingFileOffset, at: 8)
        bytes.storeBigEndian32(backingFileSize, at: 16)
        bytes.storeBigEndian32(clusterBits, at: 20)
        bytes.storeBigEndian64(size, at: 24)
        bytes.storeBigEndian32(encryptionMethod, at: 32)
        bytes.storeBigEndian32(l1Size, at: 36)
        bytes.storeBigEndian64(l1TableOffset, at: 40)
        bytes.storeBigEndian64(refcountTableOffset, at: 48)
        bytes.storeBigEndian32(refcountTableClusters, at: 56)
        bytes.storeBigEndian32(snapshotCount, at: 60)
        bytes.storeBigEndian64(snapshotsOffset, at: 64)
        if version == 3 {
            bytes.storeBigEndian64(incompatibleFeatures, at: 72)
            bytes.storeBigEndian64(compatibleFeatures, at: 80)
            bytes.storeBigEndian64(autoclearFeatures, at: 88)
            bytes.storeBigEndian32(refcountOrder, at: 96)
            bytes.storeBigEndian32(headerLength, at: 100)
            if bytes.count > Self.version3MinimumLength { bytes[Self.version3MinimumLength] = compressionType }
        }
        return bytes
    }
}
