import Glibc
import HostSystem
import Testing
@testable import SnapshotFormat

@Suite("Snapshot state file")
struct SnapshotFileTests {
    /// A made-up CPU, so the tests do not depend on the host they run on.
    static let cpu = HostCPUIdentity(
        vendor: "GenuineIntel", family: 6, model: 0x55, stepping: 7,
        features: HostCPUIdentity.recordedWords.enumerated().map { index, word in
            let value: UInt32 = word.leaf == 0xD && word.subleaf == 0 && word.register == .ecx ? 2696 : 0x3F3F_3F3F ^ UInt32(index << 24)
            return CPUIDFeatureWord(leaf: word.leaf, subleaf: word.subleaf, register: word.register, value: value)
        })

    static let sample = SnapshotFile(cpu: cpu, sections: [
        SnapshotSection(tag: SectionTag("VCPU")) { $0.encode(UInt64(0xFFFF_FFFF_8100_0000)); $0.encode(UInt32(3)) },
        SnapshotSection(tag: SectionTag("VBLK")) { $0.encode("rootfs"); $0.encode(true) },
        SnapshotSection(tag: SectionTag("VBLK")) { $0.encode("data"); $0.encode(false) },
    ])

    @Test("a file reads back equal to what was written, sections in order")
    func roundTrip() throws {
        let bytes = try Self.sample.encoded()
        #expect(bytes.starts(with: Array("SWLTSNAP".utf8)))
        let decoded = try SnapshotFile.decode(bytes, host: Self.cpu)
        #expect(decoded == Self.sample)
        #expect(decoded.sections.map(\.tag) == [SectionTag("VCPU"), SectionTag("VBLK"), SectionTag("VBLK")])
        var decoder = try #require(decoded.section(SectionTag("VBLK"))).decoder()
        #expect(try decoder.decodeString(maximumLength: 64) == "rootfs")
        // Offsets in a read section are offsets in the file.
        #expect(decoder.offset > SnapshotFile.headerSize)
    }

    @Test("the current host's identity has a vendor and round-trips on this host")
    func currentHost() throws {
        let host = HostCPUIdentity.current
        #expect(host.vendor.utf8.count == 12)
        #expect(host.features.count == HostCPUIdentity.recordedWords.count)
        let file = SnapshotFile(sections: [])
        #expect(try SnapshotFile.decode(try file.encoded(), host: host) == file)
    }

    @Test("a byte flipped anywhere after the header is a corrupt file")
    func flippedByte() throws {
        let bytes = try Self.sample.encoded()
        for offset in SnapshotFile.headerSize..<bytes.count {
            var damaged = bytes
            damaged[offset] ^= 0x10
            #expect(throws: SnapshotFileError.self, "offset \(offset)") { try SnapshotFile.decode(damaged, host: Self.cpu) }
            do {
                _ = try SnapshotFile.decode(damaged, host: Self.cpu)
            } catch {
                guard case .corrupt = error else {
                    Issue.record("offset \(offset): \(error)")
                    continue
                }
            }
        }
    }

    @Test("a file cut anywhere is too short or truncated")
    func truncation() throws {
        let bytes = try Self.sample.encoded()
        for length in 0..<bytes.count {
            do {
                _ = try SnapshotFile.decode(Array(bytes[..<length]), host: Self.cpu)
                Issue.record("length \(length) was accepted")
            } catch {
                switch error {
                case let .tooShort(size, minimum):
                    #expect(size == length && minimum == 24 && length < 24)
                case let .truncated(size, expected):
                    #expect(size == length && expected == UInt64(bytes.count))
                default:
                    Issue.record("length \(length): \(error)")
                }
            }
        }
        #expect(throws: SnapshotFileError.trailingData(size: bytes.count + 1, expected: UInt64(bytes.count))) {
            try SnapshotFile.decode(bytes + [0], host: Self.cpu)
        }
    }

    @Test("a file without the magic is not a snapshot")
    func wrongMagic() throws {
        var bytes = try Self.sample.encoded()
        bytes[0] = UInt8(ascii: "X")
        #expect(throws: SnapshotFileError.notASnapshot) { try SnapshotFile.decode(bytes, host: Self.cpu) }
        #expect(SnapshotFileError.notASnapshot.description == "not a Swiftlet snapshot (bad magic)")
        #expect(throws: SnapshotFileError.notASnapshot) {
            try SnapshotFile.decode(Array("{\"this\": \"is json, not a snapshot\"}".utf8), host: Self.cpu)
        }
    }

    @Test("another format version is refused, naming the version found and the one supported")
    func wrongVersion() throws {
        var bytes = try Self.sample.encoded()
        bytes[8] = 2
        let error = SnapshotFileError.unsupportedVersion(found: 2, supported: 1...1)
        #expect(throws: error) { try SnapshotFile.decode(bytes, host: Self.cpu) }
        #expect(error.description == "snapshot format version 2 is not supported (this build reads version 1)")
    }

    @Test("a host lacking a feature bit the snapshot's CPU had is refused, naming the bit")
    func missingFeature() throws {
        let bytes = try Self.sample.encoded()
        var host = Self.cpu
        // Take AVX2 (CPUID 0x7.0 EBX bit 5) away from the host.
        let index = try #require(host.features.firstIndex { $0.leaf == 7 && $0.register == .ebx })
        #expect(host.features[index].value & (1 << 5) != 0)
        host.features[index].value &= ~(1 << 5)
        do {
            _ = try SnapshotFile.decode(bytes, host: host)
            Issue.record("accepted a host without avx2")
        } catch {
            #expect(error == .hostCPUMismatch(.features([.bits(word: CPUIDFeatureWord(leaf: 7, subleaf: 0, register: .ebx, value: 1 << 5))])))
            #expect(error.description == "snapshot cannot be restored on this host: the snapshot needs CPU features this host lacks: CPUID 0x7.0 EBX bit 5 (avx2)")
        }
        // A smaller XSAVE area is refused too.
        var smallXSAVE = Self.cpu
        let sizeIndex = try #require(smallXSAVE.features.firstIndex { $0.leaf == 0xD && $0.subleaf == 0 && $0.register == .ecx })
        smallXSAVE.features[sizeIndex].value = 1024
        #expect(throws: SnapshotFileError.hostCPUMismatch(.features([.xsaveArea(snapshotSize: 2696, hostSize: 1024)]))) {
            try SnapshotFile.decode(bytes, host: smallXSAVE)
        }
    }

    @Test("a host with more features than the snapshot's CPU, or another model, is fine")
    func extraFeatures() throws {
        var host = Self.cpu
        host.model = 0x8F
        for index in host.features.indices where !HostCPUIdentity.isSizeWord(host.features[index]) {
            host.features[index].value = .max
        }
        #expect(try SnapshotFile.decode(try Self.sample.encoded(), host: host) == Self.sample)
    }

    @Test("a host CPU of another vendor is refused, naming both")
    func vendorMismatch() throws {
        var host = Self.cpu
        host.vendor = "AuthenticAMD"
        let error = SnapshotFileError.hostCPUMismatch(.vendor(snapshot: "GenuineIntel", host: "AuthenticAMD"))
        #expect(throws: error) { try SnapshotFile.decode(try Self.sample.encoded(), host: host) }
        #expect(error.description == "snapshot cannot be restored on this host: the snapshot was taken on a GenuineIntel CPU and this host's is AuthenticAMD")
    }

    @Test("a structurally broken file with a valid checksum is malformed, not returned half-parsed")
    func malformed() throws {
        // A section length running past the checksum, then the checksum fixed up.
        var bytes = try Self.sample.encoded()
        let checksumOffset = bytes.count - 4
        bytes[SnapshotFile.headerSize + 4] = 0xFF
        let checksum = CRC32C.checksum(of: bytes[..<checksumOffset])
        for index in 0..<4 { bytes[checksumOffset + index] = UInt8(truncatingIfNeeded: checksum >> (8 * index)) }
        #expect(throws: SnapshotFileError.self) { try SnapshotFile.decode(bytes, host: Self.cpu) }
        do {
            _ = try SnapshotFile.decode(bytes, host: Self.cpu)
        } catch {
            guard case .malformed = error else { Issue.record("\(error)"); return }
        }
    }

    @Test("write is atomic and read checks the file; a state file over the size cap is refused")
    func writeAndRead() throws {
        let directory = try Self.temporaryDirectory()
        defer { Self.removeDirectory(directory) }
        let path = directory + "/vm.snap"
        try Self.sample.write(to: path)
        #expect(try SnapshotFile.read(from: path, host: Self.cpu) == Self.sample)
        // Only the file: the temporary is renamed over it.
        #expect(Self.directoryEntries(directory) == ["vm.snap"])
        var status = stat()
        #expect(stat(path, &status) == 0 && status.st_mode & 0o777 == 0o600)

        let big = SnapshotFile(cpu: Self.cpu, sections: [SnapshotSection(tag: SectionTag("HUGE"), body: [UInt8](repeating: 0, count: SnapshotFile.maximumSize)[...])])
        #expect(throws: SnapshotFileError.self) { try big.write(to: directory + "/big.snap") }
        #expect(Self.directoryEntries(directory) == ["vm.snap"])

        let oversized = directory + "/oversized.snap"
        let descriptor = open(oversized, O_CREAT | O_WRONLY, 0o600)
        #expect(ftruncate(descriptor, off_t(SnapshotFile.maximumSize + 1)) == 0)
        close(descriptor)
        #expect(throws: SnapshotFileError.tooLarge(size: UInt64(SnapshotFile.maximumSize + 1), maximum: UInt64(SnapshotFile.maximumSize))) {
            try SnapshotFile.read(from: oversized, host: Self.cpu)
        }
        #expect(throws: SnapshotFileError.self) { try SnapshotFile.read(from: directory, host: Self.cpu) }
        #expect(throws: SnapshotFileError.self) { try SnapshotFile.read(from: directory + "/missing", host: Self.cpu) }
    }

    @Test("a failed atomic write leaves neither a temporary file nor a changed file behind")
    func atomicWriteFailure() throws {
        let directory = try Self.temporaryDirectory()
        defer { Self.removeDirectory(directory) }
        let path = directory + "/vm.snap"
        try AtomicFile.write([1, 2, 3], to: path)
        struct Stop: Error {}
        #expect(throws: AtomicFileError<Stop>.self) {
            try AtomicFile.write(to: path) { (file) throws(Stop) in
                _ = try? file.writeAll([9, 9, 9, 9])
                throw Stop()
            }
        }
        #expect(Self.directoryEntries(directory) == ["vm.snap"])
        #expect(try OwnedFileDescriptor.readWholeFile(path) == [1, 2, 3])
        #expect(throws: SnapshotFileError.self) { try Self.sample.write(to: directory + "/missing/vm.snap") }
    }

    static func temporaryDirectory() throws -> String {
        var template = Array("/tmp/swiftlet-snapshot-XXXXXX".utf8CString)
        // SAFETY: mkdtemp fills in the NUL-terminated template in place.
        let result = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }
        try #require(result != nil)
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func directoryEntries(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            // SAFETY: d_name is a NUL-terminated array inside the entry readdir returned.
            let name = withUnsafePointer(to: entry.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    static func removeDirectory(_ path: String) {
        for name in directoryEntries(path) { unlink(path + "/" + name) }
        rmdir(path)
    }
}
