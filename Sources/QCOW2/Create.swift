import Glibc
import HostSystem

extension QCOW2Image {
    /// Creates a new, empty qcow2 version 3 image of `virtualSize` bytes
    /// (rounded up to 512) with 64 KiB clusters and 16-bit refcounts, as
    /// `qemu-img create -f qcow2` does: header, one refcount table cluster,
    /// one refcount block, the L1 table. `backingFile` is stored as given
    /// (relative names resolve against the new image's folder); it must exist.
    /// Fails if `path` exists.
    public static func create(
        path: String, virtualSize: UInt64, backingFile: String? = nil, backingFormat: String? = nil, mode: mode_t = 0o644
    ) throws(QCOW2Error) {
        let clusterBits: UInt32 = 16
        let clusterSize: UInt64 = 1 << 16
        let size = roundUp(virtualSize, to: 512)
        let l2Span = clusterSize * (clusterSize / 8)
        let l1Size = size / l2Span + (size % l2Span == 0 ? 0 : 1)
        guard l1Size * 8 <= QCOW2Header.maximumL1Bytes else {
            throw .invalidCreateOptions(path: path, reason: "\(virtualSize) bytes is larger than qcow2 allows")
        }
        if let backingFormat, backingFormat != "raw", backingFormat != "qcow2" {
            throw .unknownBackingFormat(path: path, format: backingFormat)
        }
        if let backingFile {
            guard !backingFile.isEmpty, backingFile.utf8.count <= Int(QCOW2Header.maximumBackingNameLength) else {
                throw .invalidCreateOptions(path: path, reason: "the backing file name must be 1 to 1023 bytes")
            }
            // Opening it checks it exists and is readable in that format.
            _ = try openBacking(resolve(backing: backingFile, of: path), format: backingFormat, of: path, depth: 1)
        }
        let l1Clusters = roundUp(l1Size * 8, to: clusterSize) / clusterSize
        var header = QCOW2Header(
            version: 3, backingFileOffset: 0, backingFileSize: 0, clusterBits: clusterBits, size: size,
            encryptionMethod: 0, l1Size: UInt32(l1Size), l1TableOffset: 3 * clusterSize,
            refcountTableOffset: clusterSize, refcountTableClusters: 1, snapshotCount: 0, snapshotsOffset: 0,
            incompatibleFeatures: 0, compatibleFeatures: 0, autoclearFeatures: 0, refcountOrder: 4,
            headerLength: 112, compressionType: 0)
        // Header extensions: the backing format, then the end marker.
        var extensions: [UInt8] = []
        if let backingFormat, backingFile != nil {
            let name = Array(backingFormat.utf8)
            var entry = [UInt8](repeating: 0, count: 8)
            entry.storeBigEndian32(QCOW2Header.extensionBackingFormat, at: 0)
            entry.storeBigEndian32(UInt32(name.count), at: 4)
            extensions += entry + name + [UInt8](repeating: 0, count: Int(roundUp(UInt64(name.count), to: 8)) - name.count)
        }
        extensions += [UInt8](repeating: 0, count: 8)
        var name: [UInt8] = []
        if let backingFile {
            name = Array(backingFile.utf8)
            header.backingFileOffset = UInt64(header.headerLength) + UInt64(extensions.count)
            header.backingFileSize = UInt32(name.count)
        }
        var first = header.encodedFixedFields() + extensions + name
        first += [UInt8](repeating: 0, count: Int(clusterSize) - first.count)

        var refcountTable = [UInt8](repeating: 0, count: Int(clusterSize))
        refcountTable.storeBigEndian64(2 * clusterSize, at: 0)
        var refcountBlock = [UInt8](repeating: 0, count: Int(clusterSize))
        let usedClusters = 3 + l1Clusters
        for cluster in 0..<usedClusters { refcountBlock.storeBigEndian16(1, at: Int(cluster) * 2) }

        let descriptor: OwnedFileDescriptor
        do {
            descriptor = try OwnedFileDescriptor.open(path, flags: O_RDWR | O_CREAT | O_EXCL, mode: mode)
        } catch {
            throw .open(path: path, cause: error)
        }
        let file = ImageFile(descriptor: descriptor, path: path)
        do throws(QCOW2Error) {
            try file.write(bytes: first, at: 0)
            try file.write(bytes: refcountTable, at: clusterSize)
            try file.write(bytes: refcountBlock, at: 2 * clusterSize)
            // The L1 table is zeroes: extend the file over it.
            let end = usedClusters * clusterSize
            do {
                _ = try systemCall("ftruncate") { ftruncate(descriptor.rawValue, off_t(end)) }
            } catch {
                throw .write(path: path, offset: end, cause: error)
            }
            try file.sync()
        } catch {
            _ = unlink(path)
            throw error
        }
    }
}

extension Array where Element == UInt8 {
    mutating func storeBigEndian16(_ value: UInt16, at offset: Int) {
        guard offset >= 0, offset <= count - 2 else { return }
        self[offset] = UInt8(truncatingIfNeeded: value >> 8)
        self[offset + 1] = UInt8(truncatingIfNeeded: value)
    }
}
