import Foundation
import Glibc
import HostSystem
import Testing
@testable import QCOW2

/// qemu-img is the oracle: its images must read back as its raw conversions,
/// and ours must pass its check and compare equal to raw files.
enum QEMU {
    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"
    static let imageTool = "/usr/bin/qemu-img"
    static let ioTool = "/usr/bin/qemu-io"
    static var available: Bool {
        FileManager.default.isExecutableFile(atPath: imageTool) && FileManager.default.isExecutableFile(atPath: ioTool)
    }

    /// False (with the reason printed) when qemu-img is missing; under CI=true that is a failure.
    static func require() -> Bool {
        if available { return true }
        if isCI { Issue.record("qemu-img or qemu-io is missing (CI=true requires them)") } else { print("skipped: qemu-img or qemu-io is not installed") }
        return false
    }

    @discardableResult
    static func run(_ arguments: [String], tool: String = imageTool) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func mustRun(_ arguments: [String], tool: String = imageTool) throws {
        let result = try run(arguments, tool: tool)
        #expect(result.status == 0, "qemu-img \(arguments.joined(separator: " ")): \(result.output)")
    }
}

/// A fresh temporary folder per test.
final class Scratch {
    let path: String
    init() {
        var template = Array("/tmp/swiftlet-qcow2-XXXXXX".utf8CString)
        // SAFETY: mkdtemp edits the NUL-terminated template in place.
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = made.map { String(cString: $0) } ?? "/tmp/swiftlet-qcow2-fallback"
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &* 6364136223846793005 &+ 1442695040888963407
    return (0..<count).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
}

func writeFile(_ path: String, _ bytes: [UInt8]) {
    FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

func readAll(_ image: QCOW2Image) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0xaa, count: Int(image.virtualSize))
    try bytes.withUnsafeMutableBytes { try image.read(at: 0, into: $0) }
    return bytes
}

func rawBytes(_ path: String) -> [UInt8] {
    (FileManager.default.contents(atPath: path)).map { [UInt8]($0) } ?? []
}

/// Writes `data` at `offset` into a raw file (the reference copy).
func writeRaw(_ path: String, offset: Int, _ data: [UInt8]) throws {
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    try handle.seek(toOffset: UInt64(offset))
    try handle.write(contentsOf: Data(data))
    try handle.close()
}

/// Fills a raw image with a few patterned regions, then converts it to qcow2 with `options`.
func makeQEMUImage(_ scratch: Scratch, name: String, size: Int, options: [String]) throws -> (qcow2: String, raw: String) {
    let source = scratch.file(name + ".src.raw")
    var bytes = [UInt8](repeating: 0, count: size)
    for (index, offset) in [0, 70_000, size / 2 + 123, size - 5000].enumerated() {
        let chunk = pattern(4096 + index * 1000, seed: UInt64(index + 1))
        let end = min(size, offset + chunk.count)
        bytes.replaceSubrange(offset..<end, with: chunk[0..<(end - offset)])
    }
    writeFile(source, bytes)
    let image = scratch.file(name + ".qcow2")
    try QEMU.mustRun(["convert", "-f", "raw", "-O", "qcow2"] + options + [source, image])
    let raw = scratch.file(name + ".raw")
    try QEMU.mustRun(["convert", "-O", "raw", image, raw])
    return (image, raw)
}

@Suite("QCOW2 images qemu-img makes read back exactly")
struct QCOW2ReadTests {
    @Test("default, lazy-refcount, version 2, compressed and small-cluster images match their raw conversions",
          arguments: [
              ["-o", "compat=1.1"], ["-o", "lazy_refcounts=on"], ["-o", "compat=0.10"], ["-c"],
              ["-o", "cluster_size=4096"], ["-o", "refcount_bits=1"], ["-o", "refcount_bits=64"],
          ])
    func matchesRaw(options: [String]) throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        let (image, raw) = try makeQEMUImage(scratch, name: "a", size: 3 << 20, options: options)
        let opened = try QCOW2Image(path: image, readOnly: true)
        #expect(try readAll(opened) == rawBytes(raw))
    }

    @Test("a two-level backing chain (qcow2 over qcow2 over raw) reads as qemu-img converts it")
    func backingChain() throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        let base = scratch.file("base.raw")
        writeFile(base, pattern(2 << 20, seed: 9))
        try QEMU.mustRun(["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", scratch.file("middle.qcow2")])
        try QEMU.mustRun(["-f", "qcow2", "-c", "write -P 0x11 65536 70000", scratch.file("middle.qcow2")], tool: QEMU.ioTool)
        try QEMU.mustRun(["create", "-f", "qcow2", "-b", "middle.qcow2", "-F", "qcow2", scratch.file("top.qcow2"), "3M"])
        try QEMU.mustRun(["-f", "qcow2", "-c", "write -P 0x22 100000 5000", "-c", "write -z 1048576 65536", scratch.file("top.qcow2")], tool: QEMU.ioTool)
        let raw = scratch.file("top.raw")
        try QEMU.mustRun(["convert", "-O", "raw", scratch.file("top.qcow2"), raw])
        let opened = try QCOW2Image(path: scratch.file("top.qcow2"), readOnly: true)
        #expect(opened.virtualSize == 3 << 20)
        #expect(try readAll(opened) == rawBytes(raw))
    }

    @Test("an image with an internal snapshot reads its current state; writing it is refused")
    func internalSnapshot() throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        let (image, _) = try makeQEMUImage(scratch, name: "s", size: 2 << 20, options: [])
        try QEMU.mustRun(["snapshot", "-c", "first", image])
        try QEMU.mustRun(["-f", "qcow2", "-c", "write -P 0x77 0 100000", image], tool: QEMU.ioTool)
        let raw = scratch.file("s-now.raw")
        try QEMU.mustRun(["convert", "-O", "raw", image, raw])
        #expect(try readAll(try QCOW2Image(path: image, readOnly: true)) == rawBytes(raw))
        #expect(throws: QCOW2Error.unsupportedFeature(path: image, feature: "internal snapshots, for writing")) {
            try QCOW2Image(path: image, readOnly: false)
        }
    }

    @Test("a version 2 image names its raw backing file's format in a header extension")
    func version2Backing() throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        writeFile(scratch.file("base.raw"), pattern(1 << 20, seed: 12))
        let top = scratch.file("top.qcow2")
        try QEMU.mustRun(["create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw", top])
        try QEMU.mustRun(["-f", "qcow2", "-c", "write -P 0x33 4096 100000", top], tool: QEMU.ioTool)
        let raw = scratch.file("top.raw")
        try QEMU.mustRun(["convert", "-O", "raw", top, raw])
        let opened = try QCOW2Image(path: top, readOnly: true)
        #expect(opened.header.version == 2)
        #expect(opened.header.backingFormat == "raw")
        #expect(try readAll(opened) == rawBytes(raw))
    }
}

@Suite("QCOW2 images Swiftlet writes pass qemu-img check and compare")
struct QCOW2WriteTests {
    /// Random writes (partial clusters, cluster-crossing) applied to both images.
    func randomWrites(_ image: QCOW2Image, raw: String, size: Int, count: Int, seed: UInt64) throws {
        var state = seed
        func next() -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int(truncatingIfNeeded: state >> 33)
        }
        for index in 0..<count {
            let length = 1 + next() % 200_000
            let offset = next() % (size - length)
            let data = pattern(length, seed: UInt64(index) &+ seed)
            try data.withUnsafeBytes { try image.write(at: UInt64(offset), from: $0) }
            try writeRaw(raw, offset: offset, data)
        }
    }

    func checkAndCompare(_ image: String, _ raw: String) throws {
        let check = try QEMU.run(["check", image])
        #expect(check.status == 0, "qemu-img check: \(check.output)")
        #expect(!check.output.contains("leaked"), "\(check.output)")
        let compare = try QEMU.run(["compare", "-f", "qcow2", "-F", "raw", image, raw])
        #expect(compare.status == 0, "qemu-img compare: \(compare.output)")
    }

    @Test("random writes to a created image: check is clean and the content equals a raw copy")
    func createdImage() throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        let size = 16 << 20
        let path = scratch.file("new.qcow2")
        try QCOW2Image.create(path: path, virtualSize: UInt64(size))
        let raw = scratch.file("ref.raw")
        writeFile(raw, [UInt8](repeating: 0, count: size))
        do {
            let image = try QCOW2Image(path: path, readOnly: false)
            try randomWrites(image, raw: raw, size: size, count: 60, seed: 1)
            try image.flush()
            #expect(try readAll(image) == rawBytes(raw))
        }
        try checkAndCompare(path, raw)
    }

    @Test("writes over a backing file copy the rest of each cluster from it")
    func overBacking() throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        let size = 8 << 20
        let base = scratch.file("base.raw")
        let baseBytes = pattern(size, seed: 5)
        writeFile(base, baseBytes)
        let path = scratch.file("over.qcow2")
        try QCOW2Image.create(path: path, virtualSize: UInt64(size), backingFile: "base.raw", backingFormat: "raw")
        let raw = scratch.file("ref.raw")
        writeFile(raw, baseBytes)
        do {
            let image = try QCOW2Image(path: path, readOnly: false)
            try randomWrites(image, raw: raw, size: size, count: 40, seed: 2)
            try image.flush()
        }
        try checkAndCompare(path, raw)
        #expect(rawBytes(base) == baseBytes)
        // A writer of the backing file (exclusive OFD lock) keeps the image from opening.
        let writer = try OwnedFileDescriptor.open(base, flags: O_RDWR)
        #expect(try writer.tryLockWholeFile(.exclusive))
        #expect(throws: QCOW2Error.backingFileLocked(path: path, backingPath: base)) { try QCOW2Image(path: path, readOnly: true) }
    }

    @Test("writes to a qemu-img image with compressed clusters and lazy refcounts stay consistent", arguments: [["-c"], ["-o", "lazy_refcounts=on"], ["-o", "compat=0.10"], ["-o", "refcount_bits=1"], ["-o", "refcount_bits=64"], ["-o", "cluster_size=512"]])
    func overQEMUImages(options: [String]) throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        let size = 4 << 20
        let (path, raw) = try makeQEMUImage(scratch, name: "q", size: size, options: options)
        do {
            let image = try QCOW2Image(path: path, readOnly: false)
            try randomWrites(image, raw: raw, size: size, count: 30, seed: 3)
            try image.flush()
        }
        try checkAndCompare(path, raw)
    }

    @Test("a refcount table too small for the file grows (512-byte clusters: one table cluster covers 8 MiB)")
    func refcountTableGrowth() throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        let size = 24 << 20
        let path = scratch.file("small.qcow2")
        try QEMU.mustRun(["create", "-q", "-f", "qcow2", "-o", "cluster_size=512", path, "\(size)"])
        let raw = scratch.file("ref.raw")
        writeFile(raw, [UInt8](repeating: 0, count: size))
        do {
            let image = try QCOW2Image(path: path, readOnly: false)
            for step in 0..<10 {
                let data = pattern(1 << 20, seed: UInt64(step))
                let offset = step * (2 << 20) + 512 * step
                try data.withUnsafeBytes { try image.write(at: UInt64(offset), from: $0) }
                try writeRaw(raw, offset: offset, data)
            }
            try image.flush()
            #expect(try readAll(image) == rawBytes(raw))
        }
        try checkAndCompare(path, raw)
        #expect(try readAll(try QCOW2Image(path: path, readOnly: true)) == rawBytes(raw))
    }

    @Test("discard and write-zeroes read back as zeroes and leave no leaks")
    func discard() throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        let size = 8 << 20
        let base = scratch.file("base.raw")
        writeFile(base, pattern(size, seed: 11))
        for backing in [false, true] {
            let path = scratch.file("d\(backing).qcow2")
            try QCOW2Image.create(path: path, virtualSize: UInt64(size), backingFile: backing ? "base.raw" : nil, backingFormat: backing ? "raw" : nil)
            let raw = scratch.file("d\(backing).raw")
            writeFile(raw, backing ? pattern(size, seed: 11) : [UInt8](repeating: 0, count: size))
            do {
                let image = try QCOW2Image(path: path, readOnly: false)
                try randomWrites(image, raw: raw, size: size, count: 20, seed: 4)
                try image.discard(at: 1 << 20, length: 2 << 20)
                try writeRaw(raw, offset: 1 << 20, [UInt8](repeating: 0, count: 2 << 20))
                try image.writeZeroes(at: 5 << 20 + 1000, length: 300_000)
                try writeRaw(raw, offset: 5 << 20 + 1000, [UInt8](repeating: 0, count: 300_000))
                try image.flush()
                #expect(try readAll(image) == rawBytes(raw))
            }
            try checkAndCompare(path, raw)
        }
    }

    @Test("what was flushed survives the process dropping the image without closing it")
    func crashAfterFlush() throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        let size = 4 << 20
        let path = scratch.file("crash.qcow2")
        try QCOW2Image.create(path: path, virtualSize: UInt64(size))
        let raw = scratch.file("ref.raw")
        writeFile(raw, [UInt8](repeating: 0, count: size))
        let image = try QCOW2Image(path: path, readOnly: false)
        try randomWrites(image, raw: raw, size: size, count: 20, seed: 6)
        try image.flush()
        // A second open sees exactly the flushed state while the first is still alive (never closed).
        let reopened = try QCOW2Image(path: path, readOnly: true)
        #expect(try readAll(reopened) == rawBytes(raw))
        let check = try QEMU.run(["check", path])
        #expect(check.status == 0, "\(check.output)")
        withExtendedLifetime(image) {}
    }

    @Test("an image we create is one qemu-img accepts, with its backing file")
    func createWithBacking() throws {
        guard QEMU.require() else { return }
        let scratch = Scratch()
        try QCOW2Image.create(path: scratch.file("base.qcow2"), virtualSize: 1 << 20)
        try QCOW2Image.create(path: scratch.file("top.qcow2"), virtualSize: 1 << 20, backingFile: "base.qcow2", backingFormat: "qcow2")
        let info = try QEMU.run(["info", scratch.file("top.qcow2")])
        #expect(info.status == 0)
        #expect(info.output.contains("backing file: base.qcow2"))
        #expect(try QEMU.run(["check", scratch.file("top.qcow2")]).status == 0)
        #expect(throws: QCOW2Error.self) { try QCOW2Image.create(path: scratch.file("top.qcow2"), virtualSize: 1 << 20) }
    }
}

@Suite("QCOW2 refuses corrupt images at open")
struct QCOW2CorruptionTests {
    func image(_ scratch: Scratch, edit: (inout [UInt8]) -> Void) throws -> String {
        let path = scratch.file("c.qcow2")
        try? FileManager.default.removeItem(atPath: path)
        try QCOW2Image.create(path: scratch.file("c0.qcow2"), virtualSize: 1 << 20)
        var bytes = rawBytes(scratch.file("c0.qcow2"))
        try? FileManager.default.removeItem(atPath: scratch.file("c0.qcow2"))
        edit(&bytes)
        writeFile(path, bytes)
        return path
    }

    func openError(_ path: String) -> QCOW2Error? {
        do {
            _ = try QCOW2Image(path: path, readOnly: false)
            return nil
        } catch {
            return error
        }
    }

    @Test("truncated, bad magic, bad version, unknown feature, huge or misplaced tables each fail with their case")
    func refused() throws {
        let scratch = Scratch()
        var path = try image(scratch) { $0 = Array($0[0..<50]) }
        #expect(openError(path) == .truncated(path: path, offset: 0, length: 72))
        path = try image(scratch) { $0[0] = 0x51 ^ 0xff }
        #expect(openError(path) == .badMagic(path: path))
        path = try image(scratch) { $0.storeBigEndian32(4, at: 4) }
        #expect(openError(path) == .unsupportedVersion(path: path, version: 4))
        path = try image(scratch) { $0.storeBigEndian64(1 << 40, at: 72) }
        #expect(openError(path) == .unknownIncompatibleFeatures(path: path, bits: 1 << 40))
        path = try image(scratch) { $0.storeBigEndian64(1 << 4, at: 72) }
        #expect(openError(path) == .unsupportedFeature(path: path, feature: "extended L2 entries (subclusters)"))
        path = try image(scratch) { $0.storeBigEndian64(1 << 30, at: 40) }
        #expect(openError(path) == .beyondEndOfFile(path: path, what: "L1 table", offset: 1 << 30, length: 8, fileSize: 4 << 16))
        path = try image(scratch) { $0.storeBigEndian64(3 * 65536 + 512, at: 40) }
        #expect(openError(path) == .misaligned(path: path, what: "L1 table", offset: 3 * 65536 + 512))
        path = try image(scratch) { $0.storeBigEndian32(0xffff_ffff, at: 36) }
        #expect(openError(path) == .tableTooLarge(path: path, table: "L1 table", bytes: 0xffff_ffff * 8, maximum: 32 << 20))
        path = try image(scratch) { $0.storeBigEndian64(1 << 50, at: 24) }
        #expect(openError(path) == .l1TooSmall(path: path, entries: 1, needed: (1 << 50) / (1 << 29)))
        path = try image(scratch) { $0.storeBigEndian64(65536, at: 40) }
        #expect(openError(path) == .overlappingMetadata(path: path, what: "refcount table", other: "L1 table"))
        path = try image(scratch) { $0.storeBigEndian64(1 << 1, at: 72) }
        #expect(openError(path) == .markedCorrupt(path: path))
        path = try image(scratch) { $0.storeBigEndian64(1 << 0, at: 72) }
        #expect(openError(path) == .dirty(path: path))
        path = try image(scratch) { $0.storeBigEndian64(1 << 3, at: 72); $0[104] = 1 }
        #expect(openError(path) == .unsupportedCompressionType(path: path, type: 1))
    }

    @Test("an L2 entry pointing into metadata fails the request and writes nothing")
    func badL2Entry() throws {
        let scratch = Scratch()
        let path = scratch.file("l2.qcow2")
        try QCOW2Image.create(path: path, virtualSize: 1 << 20)
        do {
            let image = try QCOW2Image(path: path, readOnly: false)
            try [UInt8](repeating: 7, count: 512).withUnsafeBytes { try image.write(at: 0, from: $0) }
            try image.flush()
        }
        // The first L2 table is the cluster after the L1 table (4); its entry 0 now names the refcount table.
        var bytes = rawBytes(path)
        bytes.storeBigEndian64(65536 | 1 << 63, at: 4 * 65536)
        writeFile(path, bytes)
        let image = try QCOW2Image(path: path, readOnly: false)
        var buffer = [UInt8](repeating: 0, count: 512)
        #expect(throws: QCOW2Error.self) { try buffer.withUnsafeMutableBytes { try image.read(at: 0, into: $0) } }
        #expect(throws: QCOW2Error.self) { try buffer.withUnsafeBytes { try image.write(at: 0, from: $0) } }
        #expect(rawBytes(path)[65536..<131072] == bytes[65536..<131072])
    }

    @Test("random byte flips in the header and tables never crash the parser")
    func flips() throws {
        let scratch = Scratch()
        try QCOW2Image.create(path: scratch.file("f0.qcow2"), virtualSize: 1 << 20)
        let original = rawBytes(scratch.file("f0.qcow2"))
        var state: UInt64 = 42
        for round in 0..<300 {
            var bytes = original
            for _ in 0..<4 {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let position = Int(state >> 33) % 200
                bytes[round % 2 == 0 ? position : 65536 + position] ^= UInt8(truncatingIfNeeded: state >> 13)
            }
            let path = scratch.file("f.qcow2")
            try? FileManager.default.removeItem(atPath: path)
            writeFile(path, bytes)
            if let image = try? QCOW2Image(path: path, readOnly: true) {
                var buffer = [UInt8](repeating: 0, count: 4096)
                _ = try? buffer.withUnsafeMutableBytes { try image.read(at: 0, into: $0) }
            }
        }
    }
}

@Suite("QCOW2 shared tables")
struct QCOW2SharedTableTests {
    @Test("two L1 entries naming one L2 table are refused as overlapping metadata")
    func sharedL2() throws {
        let scratch = Scratch()
        let path = scratch.file("shared.qcow2")
        // 2 GiB: four L1 entries.
        try QCOW2Image.create(path: path, virtualSize: 2 << 30)
        do {
            let image = try QCOW2Image(path: path, readOnly: false)
            try [UInt8](repeating: 1, count: 512).withUnsafeBytes { try image.write(at: 0, from: $0) }
            try image.flush()
        }
        var bytes = rawBytes(path)
        let first = bytes.bigEndian64(at: 3 * 65536)
        bytes.storeBigEndian64(first, at: 3 * 65536 + 8)
        writeFile(path, bytes)
        let offset = first & 0x00ff_ffff_ffff_fe00
        #expect(throws: QCOW2Error.overlappingMetadata(path: path, what: "L2 table at \(offset)", other: "L2 table at \(offset)")) {
            try QCOW2Image(path: path, readOnly: true)
        }
    }
}
