import HostSystem

/// Why a snapshot state file was not written or not read. Each case is one
/// line naming the first check the file failed.
public enum SnapshotFileError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Opening, checking or reading the file failed.
    case read(path: String, cause: RegularFileError)
    /// Creating, writing, syncing or renaming the file failed.
    case write(path: String, cause: SystemCallError)
    /// Larger than `SnapshotFile.maximumSize` (read or about to be written).
    case tooLarge(size: UInt64, maximum: UInt64)
    /// Shorter than the smallest possible file.
    case tooShort(size: Int, minimum: Int)
    /// Shorter than the length its header records.
    case truncated(size: Int, expected: UInt64)
    /// Longer than the length its header records.
    case trailingData(size: Int, expected: UInt64)
    /// Does not start with the magic.
    case notASnapshot
    case unsupportedVersion(found: UInt32, supported: ClosedRange<UInt32>)
    /// The checksum does not match the contents.
    case corrupt(stored: UInt32, computed: UInt32)
    /// The checksum matched but the contents are not well formed (a writer
    /// bug, or a file forged with a valid checksum).
    case malformed(StateDecodingError)
    /// The host CPU cannot run the snapshot's guest.
    case hostCPUMismatch(CPUMismatch)

    public var description: String {
        switch self {
        case let .read(path, cause):
            "cannot read snapshot \(path): \(cause)"
        case let .write(path, cause):
            "cannot write snapshot \(path): \(cause)"
        case let .tooLarge(size, maximum):
            "snapshot state file is \(size) bytes, more than the \(maximum) allowed"
        case let .tooShort(size, minimum):
            "snapshot state file is too short: \(size) bytes, at least \(minimum) needed"
        case let .truncated(size, expected):
            "snapshot state file is truncated: \(size) of its \(expected) bytes"
        case let .trailingData(size, expected):
            "snapshot state file has \(UInt64(size) - min(expected, UInt64(size))) bytes after its end (\(size) bytes, header says \(expected))"
        case .notASnapshot:
            "not a Swiftlet snapshot (bad magic)"
        case let .unsupportedVersion(found, supported):
            "snapshot format version \(found) is not supported (this build reads version\(supported.count == 1 ? " \(supported.lowerBound)" : "s \(supported.lowerBound)-\(supported.upperBound)"))"
        case let .corrupt(stored, computed):
            "snapshot state file is corrupt: checksum \(hex(stored)) does not match its contents (\(hex(computed)))"
        case let .malformed(cause):
            "snapshot state file is malformed: \(cause)"
        case let .hostCPUMismatch(mismatch):
            "snapshot cannot be restored on this host: \(mismatch)"
        }
    }

    private func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16).leftPadded(to: 8) }
}

/// One top-level section of a snapshot: a device's or the VM's saved state.
public struct SnapshotSection: Equatable, Sendable {
    public var tag: SectionTag
    /// The body; read from a file, its indices are offsets in the file.
    public var body: ArraySlice<UInt8>

    public init(tag: SectionTag, body: ArraySlice<UInt8>) {
        self.tag = tag
        self.body = body
    }

    /// A section whose body `encode` writes.
    public init(tag: SectionTag, _ encode: (inout StateEncoder) -> Void) {
        var encoder = StateEncoder()
        encode(&encoder)
        self.init(tag: tag, body: encoder.bytes[...])
    }

    /// A decoder over the body.
    public func decoder() -> StateDecoder { StateDecoder(body) }
}

/// The snapshot state file: everything but guest RAM (which is in the
/// memory file, see `GuestMemoryFileLayout` in GuestMemory).
///
/// Layout, all integers little-endian (docs/snapshots.md):
///
///     0   magic "SWLTSNAP"            8 bytes
///     8   format version              UInt32
///     12  file length                 UInt64, including the checksum
///     20  section "CPUI"              the host CPU identity
///         sections                    tag, UInt32 length, body; any number
///     end-4  CRC-32C of all bytes before it   UInt32
public struct SnapshotFile: Equatable, Sendable {
    public static let magic: [UInt8] = Array("SWLTSNAP".utf8)
    public static let currentVersion: UInt32 = 1
    public static let supportedVersions: ClosedRange<UInt32> = 1...1
    /// Device and vCPU state is kilobytes; the cap keeps a hostile or wrong
    /// file from making the VMM allocate gigabytes.
    public static let maximumSize = 64 << 20
    public static let cpuTag = SectionTag("CPUI")
    /// Magic, version and length.
    static let headerSize = 20
    static let checksumSize = 4
    static let minimumSize = headerSize + checksumSize

    /// The CPU the snapshot was taken on.
    public var cpu: HostCPUIdentity
    /// The saved state, in order; tags may repeat (one per device).
    public var sections: [SnapshotSection]

    public init(cpu: HostCPUIdentity = .current, sections: [SnapshotSection]) {
        self.cpu = cpu
        self.sections = sections
    }

    /// The first section tagged `tag`.
    public func section(_ tag: SectionTag) -> SnapshotSection? {
        sections.first { $0.tag == tag }
    }

    /// The file's bytes.
    public func encoded() throws(SnapshotFileError) -> [UInt8] {
        var encoder = StateEncoder()
        encoder.append(raw: Self.magic)
        encoder.encode(Self.currentVersion)
        encoder.encode(UInt64(0))
        encoder.section(Self.cpuTag) { cpu.encode(into: &$0) }
        for section in sections {
            encoder.section(section.tag) { $0.append(raw: section.body) }
        }
        var bytes = encoder.bytes
        let size = bytes.count + Self.checksumSize
        // A larger file would be refused on restore; refuse it now instead.
        guard size <= Self.maximumSize else { throw .tooLarge(size: UInt64(size), maximum: UInt64(Self.maximumSize)) }
        for index in 0..<8 { bytes[12 + index] = UInt8(truncatingIfNeeded: UInt64(size) >> (8 * index)) }
        let checksum = CRC32C.checksum(of: bytes)
        for index in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: checksum >> (8 * index))) }
        return bytes
    }

    /// Parses and checks a state file, in this order: size, magic, version,
    /// length, checksum, structure, then the CPU against `host`. The first
    /// failing check is the error; nothing partly parsed is returned.
    public static func decode(_ bytes: [UInt8], host: HostCPUIdentity) throws(SnapshotFileError) -> SnapshotFile {
        guard bytes.count <= maximumSize else { throw .tooLarge(size: UInt64(bytes.count), maximum: UInt64(maximumSize)) }
        guard bytes.count >= minimumSize else { throw .tooShort(size: bytes.count, minimum: minimumSize) }
        guard bytes.starts(with: magic) else { throw .notASnapshot }
        // Each field is within minimumSize, so these reads cannot fail.
        var header = StateDecoder(bytes[magic.count..<headerSize])
        let version = (try? header.decode(UInt32.self)) ?? 0
        guard supportedVersions.contains(version) else { throw .unsupportedVersion(found: version, supported: supportedVersions) }
        let length = (try? header.decode(UInt64.self)) ?? 0
        guard UInt64(bytes.count) >= length else { throw .truncated(size: bytes.count, expected: length) }
        guard UInt64(bytes.count) == length else { throw .trailingData(size: bytes.count, expected: length) }
        let checksumOffset = bytes.count - checksumSize
        var trailer = StateDecoder(bytes[checksumOffset...])
        let stored = (try? trailer.decode(UInt32.self)) ?? 0
        let computed = CRC32C.checksum(of: bytes[..<checksumOffset])
        guard stored == computed else { throw .corrupt(stored: stored, computed: computed) }

        let file: SnapshotFile
        do {
            var decoder = StateDecoder(bytes[headerSize..<checksumOffset])
            let cpu = try decoder.section(cpuTag) { (body) throws(StateDecodingError) in try HostCPUIdentity(decoding: &body) }
            var sections: [SnapshotSection] = []
            while !decoder.isAtEnd {
                let (tag, body) = try decoder.nextSection()
                sections.append(SnapshotSection(tag: tag, body: body.remainingBytes))
            }
            file = SnapshotFile(cpu: cpu, sections: sections)
        } catch {
            throw .malformed(error)
        }
        if let mismatch = file.cpu.incompatibility(onHost: host) { throw .hostCPUMismatch(mismatch) }
        return file
    }

    /// Writes the file atomically (see `AtomicFile`), mode 0600: it holds
    /// the guest's registers and device state.
    public func write(to path: String) throws(SnapshotFileError) {
        let bytes = try encoded()
        do {
            try AtomicFile.write(bytes, to: path)
        } catch {
            throw .write(path: path, cause: error)
        }
    }

    /// Reads and checks the state file at `path` (see `decode`).
    public static func read(from path: String, host: HostCPUIdentity = .current) throws(SnapshotFileError) -> SnapshotFile {
        let bytes: [UInt8]
        do {
            bytes = try OwnedFileDescriptor.readRegularFile(path, maximumSize: UInt64(maximumSize))
        } catch {
            if case let .tooLarge(size, maximum) = error { throw .tooLarge(size: size, maximum: maximum) }
            throw .read(path: path, cause: error)
        }
        return try decode(bytes, host: host)
    }
}

extension StateDecoder {
    /// The bytes not yet read, without consuming them.
    public var remainingBytes: ArraySlice<UInt8> {
        var copy = self
        return (try? copy.take(remaining)) ?? []
    }
}
