import Glibc
import GuestMemory
import HostSystem
import Testing
import Virtio
@testable import VirtioBlock
import VirtioTestSupport

/// A temporary raw image, removed on deinit.
final class TemporaryImage {
    let path: String

    /// An image of `sectors` sectors; byte i of sector s holds (s &+ i) & 0xFF.
    init(sectors: Int = 128, size: Int? = nil) throws {
        var template = Array("/tmp/swiftlet-blk-XXXXXX".utf8CString)
        let descriptor = mkstemp(&template)
        try #require(descriptor >= 0)
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        let length = size ?? sectors * 512
        let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 / 512 &+ $0 % 512) }
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        close(descriptor)
        try #require(written == length)
    }

    deinit { unlink(path) }

    func contents() throws -> [UInt8] { try OwnedFileDescriptor.readWholeFile(path) }

    static func expectedSector(_ sector: Int) -> [UInt8] {
        (0..<512).map { UInt8(truncatingIfNeeded: sector &+ $0) }
    }
}

/// Builds virtio-blk requests in guest memory through `DriverQueue` and
/// serves them synchronously with the real queue and request processor.
final class BlockRig {
    let memory: GuestMemory
    let driver: DriverQueue
    var queue: Virtqueue
    let processor: BlockRequestProcessor
    let image: TemporaryImage
    let counters = VirtioCounters()

    init(readOnly: Bool = false, directIO: Bool = false, features: UInt64? = nil, image: TemporaryImage? = nil) throws {
        memory = try GuestMemory(ranges: [(GuestAddress(0), 4 << 20)])
        driver = DriverQueue(memory: memory, size: 64)
        let negotiated = features ?? (VirtioFeature.indirectDescriptors | BlockFeature.discard | BlockFeature.writeZeroes | BlockFeature.flush)
        queue = try driver.deviceQueue(features: negotiated)
        self.image = try image ?? TemporaryImage()
        let disk = try DiskImage(path: self.image.path, readOnly: readOnly, directIO: directIO)
        processor = BlockRequestProcessor(disk: disk, memory: memory, features: negotiated,
                                          identifier: Array("test-disk".utf8) + [UInt8](repeating: 0, count: 11), counters: counters)
    }

    /// A 16-byte request header in guest memory.
    func header(type: UInt32, sector: UInt64) throws -> GuestAddress {
        let address = driver.allocate(16)
        try memory.write(type.littleEndian, at: address)
        try memory.write(UInt32(0), at: address + 4)
        try memory.write(sector.littleEndian, at: address + 8)
        return address
    }

    /// A device-readable buffer holding `bytes`.
    func readable(_ bytes: [UInt8]) throws -> DriverQueue.Buffer {
        let address = driver.allocate(bytes.count)
        try memory.write(bytes: bytes, at: address)
        return DriverQueue.Buffer(address: address, length: UInt32(bytes.count), writable: false)
    }

    func writable(_ length: Int) -> DriverQueue.Buffer {
        DriverQueue.Buffer(address: driver.allocate(length), length: UInt32(length), writable: true)
    }

    /// Pops the next chain, handles it and returns it to the used ring.
    func serve() throws -> BlockRequestOutcome {
        let chain = try #require(try queue.popChain())
        let outcome = processor.handle(chain)
        try queue.addUsed(head: chain.head, writtenLength: outcome.writtenLength)
        let used = try #require(driver.popUsed())
        #expect(used.length == outcome.writtenLength)
        return outcome
    }

    /// Submits header + `data` (device-readable) + `reply` writable bytes + a status byte.
    func submit(type: UInt32, sector: UInt64 = 0, data: [[UInt8]] = [], reply: [Int] = [], statusByte: Bool = true,
                indirect: Bool = false) throws -> (outcome: BlockRequestOutcome, reply: [[UInt8]], status: UInt8?) {
        var buffers = [DriverQueue.Buffer(address: try header(type: type, sector: sector), length: 16, writable: false)]
        for bytes in data { buffers.append(try readable(bytes)) }
        let replies = reply.map { writable($0) }
        buffers += replies
        let status = writable(1)
        try memory.write(UInt8(0xEE), at: status.address)
        if statusByte { buffers.append(status) }
        if indirect { driver.addIndirectChain(buffers) } else { driver.addChain(buffers) }
        let outcome = try serve()
        let replyBytes = try replies.map { try memory.readBytes(at: $0.address, count: Int($0.length)) }
        let statusValue: UInt8 = try memory.read(at: status.address)
        return (outcome, replyBytes, statusByte ? statusValue : nil)
    }

    static func segment(sector: UInt64, sectors: UInt32, flags: UInt32 = 0) -> [UInt8] {
        withUnsafeBytes(of: sector.littleEndian, Array.init) + withUnsafeBytes(of: sectors.littleEndian, Array.init)
            + withUnsafeBytes(of: flags.littleEndian, Array.init)
    }
}

@Suite("virtio-blk requests")
struct BlockRequestTests {
    @Test("IN reads sectors into buffers split at odd offsets")
    func readSplitBuffers() throws {
        let rig = try BlockRig()
        let result = try rig.submit(type: BlockRequestType.read, sector: 3, reply: [100, 924])
        #expect(result.status == BlockStatus.ok)
        #expect(result.outcome.writtenLength == 1025)
        #expect(result.reply.joined().elementsEqual(TemporaryImage.expectedSector(3) + TemporaryImage.expectedSector(4)))
        #expect(rig.counters.bytesToGuest.load(ordering: .relaxed) == 1024)
    }

    @Test("OUT writes the guest's bytes to the image at the sector, and FLUSH succeeds")
    func writeThenFlush() throws {
        let rig = try BlockRig()
        let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
        let write = try rig.submit(type: BlockRequestType.write, sector: 10, data: [Array(pattern[..<300]), Array(pattern[300...])])
        #expect(write.status == BlockStatus.ok)
        #expect(write.outcome.writtenLength == 1)
        let flush = try rig.submit(type: BlockRequestType.flush)
        #expect(flush.status == BlockStatus.ok)
        let contents = try rig.image.contents()
        #expect(Array(contents[(10 * 512)..<(12 * 512)]) == pattern)
        #expect(Array(contents[(9 * 512)..<(10 * 512)]) == TemporaryImage.expectedSector(9))
        #expect(Array(contents[(12 * 512)..<(13 * 512)]) == TemporaryImage.expectedSector(12))
    }

    @Test("A request through an indirect table is served like a direct one")
    func indirectRead() throws {
        let rig = try BlockRig()
        let result = try rig.submit(type: BlockRequestType.read, sector: 127, reply: [512], indirect: true)
        #expect(result.status == BlockStatus.ok)
        #expect(result.reply[0] == TemporaryImage.expectedSector(127))
    }

    @Test("GET_ID returns the 20-byte id, zero-padded; a shorter buffer is IOERR")
    func getID() throws {
        let rig = try BlockRig()
        let result = try rig.submit(type: BlockRequestType.getID, reply: [32])
        #expect(result.status == BlockStatus.ok)
        #expect(result.outcome.writtenLength == 21)
        #expect(Array(result.reply[0][..<20]) == Array("test-disk".utf8) + [UInt8](repeating: 0, count: 11))
        let short = try rig.submit(type: BlockRequestType.getID, reply: [19])
        #expect(short.status == BlockStatus.ioError)
        #expect(short.outcome.error == .identifierBufferTooShort(length: 19))
    }

    @Test("DISCARD and WRITE_ZEROES (with and without unmap) leave zeroes and keep the image's size")
    func discardAndWriteZeroes() throws {
        let rig = try BlockRig()
        let discard = try rig.submit(type: BlockRequestType.discard,
                                     data: [BlockRig.segment(sector: 8, sectors: 8) + BlockRig.segment(sector: 32, sectors: 0)])
        #expect(discard.status == BlockStatus.ok)
        let zeroes = try rig.submit(type: BlockRequestType.writeZeroes, data: [BlockRig.segment(sector: 20, sectors: 3)])
        #expect(zeroes.status == BlockStatus.ok)
        let unmapped = try rig.submit(type: BlockRequestType.writeZeroes,
                                      data: [BlockRig.segment(sector: 40, sectors: 8, flags: BlockLimits.unmapFlag)])
        #expect(unmapped.status == BlockStatus.ok)
        let contents = try rig.image.contents()
        #expect(contents.count == 128 * 512)
        // ext4 punches 4 KiB blocks: sectors 8-15 are one aligned block.
        #expect(contents[(8 * 512)..<(16 * 512)].allSatisfy { $0 == 0 })
        #expect(contents[(20 * 512)..<(23 * 512)].allSatisfy { $0 == 0 })
        #expect(contents[(40 * 512)..<(48 * 512)].allSatisfy { $0 == 0 })
        #expect(Array(contents[(23 * 512)..<(24 * 512)]) == TemporaryImage.expectedSector(23))
        #expect(Array(contents[(19 * 512)..<(20 * 512)]) == TemporaryImage.expectedSector(19))
    }

    @Test("Zeroes are written by hand when fallocate cannot")
    func writeZeroBytesFallback() throws {
        let rig = try BlockRig()
        try rig.processor.disk.writeZeroBytes(at: 512, length: 1024)
        let contents = try rig.image.contents()
        #expect(contents[512..<1536].allSatisfy { $0 == 0 })
        #expect(Array(contents[1536..<2048]) == TemporaryImage.expectedSector(3))
    }

    @Test("A read-only disk refuses OUT, DISCARD and WRITE_ZEROES with IOERR and is left unchanged")
    func readOnlyRefusals() throws {
        let rig = try BlockRig(readOnly: true)
        let before = try rig.image.contents()
        let write = try rig.submit(type: BlockRequestType.write, sector: 0, data: [[UInt8](repeating: 1, count: 512)])
        #expect(write.status == BlockStatus.ioError)
        #expect(write.outcome.error == .readOnly(type: BlockRequestType.write))
        let discard = try rig.submit(type: BlockRequestType.discard, data: [BlockRig.segment(sector: 0, sectors: 8)])
        #expect(discard.status == BlockStatus.ioError)
        let zeroes = try rig.submit(type: BlockRequestType.writeZeroes, data: [BlockRig.segment(sector: 0, sectors: 8)])
        #expect(zeroes.status == BlockStatus.ioError)
        #expect(try rig.submit(type: BlockRequestType.read, reply: [512]).status == BlockStatus.ok)
        #expect(try rig.submit(type: BlockRequestType.flush).status == BlockStatus.ok)
        #expect(try rig.image.contents() == before)
    }

    @Test("Sector ranges past the end, or wrapping past 2^64, are IOERR", arguments: [
        (UInt64(128), 1), (127, 2), (UInt64.max, 1), (UInt64.max - 1, 4), (1 << 55, 1),
    ])
    func sectorRanges(sector: UInt64, sectors: Int) throws {
        let rig = try BlockRig()
        let read = try rig.submit(type: BlockRequestType.read, sector: sector, reply: [sectors * 512])
        #expect(read.status == BlockStatus.ioError)
        #expect(read.outcome.error == .sectorRangeOutOfBounds(sector: sector, sectors: UInt64(sectors), capacity: 128))
        let write = try rig.submit(type: BlockRequestType.write, sector: sector, data: [[UInt8](repeating: 9, count: sectors * 512)])
        #expect(write.status == BlockStatus.ioError)
        let discard = try rig.submit(type: BlockRequestType.discard, data: [BlockRig.segment(sector: sector, sectors: UInt32(sectors))])
        #expect(discard.status == BlockStatus.ioError)
        #expect(try rig.image.contents().count == 128 * 512)
    }

    @Test("Data that is not whole sectors is IOERR")
    func oddLengths() throws {
        let rig = try BlockRig()
        #expect(try rig.submit(type: BlockRequestType.read, reply: [511]).outcome.error == .dataNotSectorMultiple(type: 0, length: 511))
        #expect(try rig.submit(type: BlockRequestType.write, data: [[1, 2, 3]]).status == BlockStatus.ioError)
        #expect(try rig.submit(type: BlockRequestType.read, reply: [512, 1]).status == BlockStatus.ioError)
        let before = try rig.image.contents()
        #expect(before == (try TemporaryImage().contents()))
    }

    @Test("A header split across buffers, or sharing one with the data, is parsed like a separate one")
    func headerLayouts() throws {
        let rig = try BlockRig()
        let header = try rig.header(type: BlockRequestType.read, sector: 9)
        let reply = rig.writable(512), status = rig.writable(1)
        rig.driver.addChain([DriverQueue.Buffer(address: header, length: 5, writable: false),
                             DriverQueue.Buffer(address: header + 5, length: 11, writable: false), reply, status])
        #expect(try rig.serve().status == BlockStatus.ok)
        #expect(try rig.memory.readBytes(at: reply.address, count: 512) == TemporaryImage.expectedSector(9))

        let pattern = (0..<512).map { UInt8(truncatingIfNeeded: $0 ^ 0x3C) }
        let combined = rig.driver.allocate(16 + 512)
        try rig.memory.write(BlockRequestType.write, at: combined)
        try rig.memory.write(UInt64(20), at: combined + 8)
        try rig.memory.write(bytes: pattern, at: combined + 16)
        rig.driver.addChain([DriverQueue.Buffer(address: combined, length: 16 + 512, writable: false), rig.writable(1)])
        #expect(try rig.serve().status == BlockStatus.ok)
        #expect(Array(try rig.image.contents()[(20 * 512)..<(21 * 512)]) == pattern)
    }

    @Test("A header shorter than 16 bytes is IOERR")
    func shortHeader() throws {
        let rig = try BlockRig()
        let header = try rig.header(type: BlockRequestType.read, sector: 0)
        let status = rig.writable(1)
        rig.driver.addChain([DriverQueue.Buffer(address: header, length: 12, writable: false), status])
        let outcome = try rig.serve()
        #expect(outcome.error == .headerTooShort(length: 12))
        #expect(try rig.memory.read(UInt8.self, at: status.address) == BlockStatus.ioError)
    }

    @Test("A chain without a writable status byte comes back with nothing written and nothing done")
    func missingStatus() throws {
        let rig = try BlockRig()
        let result = try rig.submit(type: BlockRequestType.write, data: [[UInt8](repeating: 0xAB, count: 512)], statusByte: false)
        #expect(result.outcome.status == nil)
        #expect(result.outcome.writtenLength == 0)
        #expect(Array(try rig.image.contents()[..<512]) == TemporaryImage.expectedSector(0))
        #expect(rig.counters.errors.load(ordering: .relaxed) == 1)
    }

    @Test("Data in the wrong direction is IOERR")
    func wrongDirection() throws {
        let rig = try BlockRig()
        let readWithData = try rig.submit(type: BlockRequestType.read, data: [[UInt8](repeating: 0, count: 512)], reply: [512])
        #expect(readWithData.outcome.error == .unexpectedReadableData(type: 0, length: 512))
        let writeWithReply = try rig.submit(type: BlockRequestType.write, data: [[UInt8](repeating: 0, count: 512)], reply: [512])
        #expect(writeWithReply.outcome.error == .unexpectedWritableData(type: 1, length: 512))
        #expect(Array(try rig.image.contents()[..<512]) == TemporaryImage.expectedSector(0))
        let flushWithData = try rig.submit(type: BlockRequestType.flush, data: [[1]])
        #expect(flushWithData.status == BlockStatus.ioError)
    }

    @Test("Unknown types, unnegotiated features and unknown flags are UNSUPP", arguments: [UInt32(2), 10, 14, 99, UInt32.max])
    func unsupported(type: UInt32) throws {
        let rig = try BlockRig()
        let result = try rig.submit(type: type, reply: [512])
        #expect(result.status == BlockStatus.unsupported)
        #expect(result.outcome.writtenLength == 1)
    }

    @Test("DISCARD with unmap, unknown flags, or without the feature is UNSUPP; bad segment lists are IOERR")
    func segmentChecks() throws {
        let rig = try BlockRig()
        #expect(try rig.submit(type: BlockRequestType.discard, data: [BlockRig.segment(sector: 0, sectors: 8, flags: 1)]).status == BlockStatus.unsupported)
        #expect(try rig.submit(type: BlockRequestType.writeZeroes, data: [BlockRig.segment(sector: 0, sectors: 8, flags: 2)]).status == BlockStatus.unsupported)
        #expect(try rig.submit(type: BlockRequestType.discard, data: [[1, 2, 3]]).outcome.error == .invalidSegmentList(type: 11, length: 3))
        #expect(try rig.submit(type: BlockRequestType.discard).status == BlockStatus.ioError)
        let many = (0..<33).flatMap { BlockRig.segment(sector: UInt64($0), sectors: 1) }
        #expect(try rig.submit(type: BlockRequestType.discard, data: [many]).outcome.error == .tooManySegments(type: 11, count: 33, maximum: 32))
        #expect(try rig.image.contents() == (try TemporaryImage().contents()))

        let plain = try BlockRig(features: 0)
        #expect(try plain.submit(type: BlockRequestType.discard, data: [BlockRig.segment(sector: 0, sectors: 8)]).status == BlockStatus.unsupported)
        #expect(try plain.submit(type: BlockRequestType.writeZeroes, data: [BlockRig.segment(sector: 0, sectors: 8)]).status == BlockStatus.unsupported)
    }

    @Test("O_DIRECT serves aligned buffers directly and unaligned ones through the bounce buffer")
    func directIO() throws {
        let rig = try BlockRig(directIO: true)
        // DriverQueue allocates 16-byte aligned buffers: a 512-byte read lands unaligned after a 16-byte header.
        let unaligned = try rig.submit(type: BlockRequestType.read, sector: 5, reply: [200, 312])
        #expect(unaligned.status == BlockStatus.ok)
        #expect(unaligned.reply.joined().elementsEqual(TemporaryImage.expectedSector(5)))
        let aligned = GuestAddress(0x300000)
        rig.driver.addChain([DriverQueue.Buffer(address: try rig.header(type: BlockRequestType.read, sector: 6), length: 16, writable: false),
                             DriverQueue.Buffer(address: aligned, length: 4096, writable: true), rig.writable(1)])
        #expect(try rig.serve().status == BlockStatus.ok)
        #expect(try rig.memory.readBytes(at: aligned, count: 512) == TemporaryImage.expectedSector(6))
        let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        #expect(try rig.submit(type: BlockRequestType.write, sector: 100, data: [Array(pattern[..<17]), Array(pattern[17...])]).status == BlockStatus.ok)
        #expect(Array(try rig.image.contents()[(100 * 512)..<(102 * 512)]) == pattern)
    }
}

@Suite("virtio-blk disk images")
struct DiskImageTests {
    @Test("A missing image, a directory and one not a multiple of 512 are refused with a clear message; an empty one is a valid placeholder")
    func refusals() throws {
        #expect(throws: VirtioBlockError.self) { try DiskImage(path: "/nonexistent/disk.img") }
        do {
            _ = try DiskImage(path: "/nonexistent/disk.img")
        } catch {
            #expect(error.description == "disk image '/nonexistent/disk.img' does not exist")
        }
        #expect(throws: VirtioBlockError.open(path: "/tmp", readOnly: false, directIO: false,
                                               cause: SystemCallError(call: "open /tmp", errno: Errno(rawValue: EISDIR)))) {
            try DiskImage(path: "/tmp")
        }
        #expect(throws: VirtioBlockError.notADiskImage(path: "/tmp", kind: "a directory")) { try DiskImage(path: "/tmp", readOnly: true) }
        let odd = try TemporaryImage(size: 1000)
        #expect(throws: VirtioBlockError.invalidSize(path: odd.path, size: 1000)) { try DiskImage(path: odd.path) }
        // A 0-byte placeholder is a disk of capacity 0 (Firecracker accepts it; PATCH /drives swaps it later).
        let empty = try TemporaryImage(size: 0)
        #expect(try DiskImage(path: empty.path).capacityInSectors == 0)
        #expect(VirtioBlockError.invalidSize(path: "a.img", size: 1000).description.contains("expected a multiple of 512"))
        #expect(VirtioBlockError.open(path: "a.img", readOnly: false, directIO: false,
                                      cause: SystemCallError(call: "open", errno: .permissionDenied)).description
            == "disk image 'a.img' is not readable and writable (permission denied); add readonly=on to attach it read-only")
    }

    @Test("One image attached twice is refused unless both are read-only")
    func sameImageTwice() throws {
        let image = try TemporaryImage(), other = try TemporaryImage()
        // Unlocked (as the VMM opens them before this check), or the second open would meet the first's lock.
        let writable = try DiskImage(path: image.path, lockNow: false), readOnly = try DiskImage(path: image.path, readOnly: true, lockNow: false)
        #expect(throws: VirtioBlockError.sameImage(path: image.path, otherPath: image.path)) {
            try DiskImage.checkDistinct([writable, try DiskImage(path: other.path, lockNow: false), readOnly])
        }
        #expect(throws: Never.self) { try DiskImage.checkDistinct([readOnly, try DiskImage(path: image.path, readOnly: true, lockNow: false), try DiskImage(path: other.path, lockNow: false)]) }
    }

    @Test("An image is locked while open: a second writer is refused with one line naming it, readers share, release frees it")
    func crossProcessLock() throws {
        let image = try TemporaryImage()
        var writer: DiskImage? = try DiskImage(path: image.path)
        #expect(writer != nil)
        // Another open file description stands for another VMM: OFD locks conflict between them.
        #expect(throws: VirtioBlockError.locked(path: image.path, readOnly: false)) { try DiskImage(path: image.path) }
        #expect(throws: VirtioBlockError.locked(path: image.path, readOnly: true)) { try DiskImage(path: image.path, readOnly: true) }
        #expect(VirtioBlockError.locked(path: "a.img", readOnly: false).description
            == "disk image 'a.img' is locked: another process holds it open (another VMM?); stop it, or attach the image read-only everywhere")
        writer = nil
        var reader: DiskImage? = try DiskImage(path: image.path, readOnly: true)
        let secondReader = try DiskImage(path: image.path, readOnly: true)
        #expect(throws: VirtioBlockError.locked(path: image.path, readOnly: false)) { try DiskImage(path: image.path) }
        reader = nil
        #expect(reader == nil && secondReader.readOnly)
        #expect(throws: VirtioBlockError.locked(path: image.path, readOnly: false)) { try DiskImage(path: image.path) }
    }

    @Test("PATCH /drives: another image is locked and the old one released; the same image keeps the drive's lock")
    func lockOnSwap() throws {
        let first = try TemporaryImage(), second = try TemporaryImage()
        let device = try VirtioBlockDevice(disk: try DiskImage(path: first.path), name: "data")
        // The same file again (Firecracker clients patch a drive to its own path after resizing it).
        do {
            let again = try DiskImage(path: first.path, lockNow: false)
            try again.acquireLock(replacing: device.disk)
            try device.update(disk: again)
        }
        #expect(throws: VirtioBlockError.locked(path: first.path, readOnly: false)) { try DiskImage(path: first.path) }
        // Another file: locked now; the first is free once the device lets go of it.
        do {
            let other = try DiskImage(path: second.path, lockNow: false)
            try other.acquireLock(replacing: device.disk)
            try device.update(disk: other)
        }
        #expect(throws: VirtioBlockError.locked(path: second.path, readOnly: false)) { try DiskImage(path: second.path) }
        #expect(throws: Never.self) { try DiskImage(path: first.path) }
    }

    @Test("Disk ids: 1 to 20 letters, digits, '-', '_', '.'")
    func identifiers() throws {
        for good in ["disk0", "a", "root_fs-1.img", String(repeating: "x", count: 20)] {
            #expect(throws: Never.self) { try VirtioBlockDevice.validate(identifier: good) }
        }
        for bad in ["", String(repeating: "x", count: 21), "has space", "ünï", "a/b", "x\0"] {
            #expect(throws: VirtioBlockError.invalidIdentifier(bad)) { try VirtioBlockDevice.validate(identifier: bad) }
        }
    }
}

@Suite("virtio-blk device")
struct BlockDeviceTests {
    static func configuration(_ device: VirtioBlockDevice, offset: UInt64, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xFF, count: count)
        bytes.withUnsafeMutableBytes { device.readConfiguration(offset: offset, into: $0) }
        return bytes
    }

    @Test("Features and configuration space: capacity, seg_max, blk_size, discard limits; read-only disks offer RO and no discard")
    func featuresAndConfiguration() throws {
        let image = try TemporaryImage(sectors: 2048)
        let device = try VirtioBlockDevice(path: image.path, identifier: "disk0")
        #expect(device.offeredFeatures & BlockFeature.flush != 0)
        #expect(device.offeredFeatures & BlockFeature.discard != 0)
        #expect(device.offeredFeatures & BlockFeature.writeZeroes != 0)
        #expect(device.offeredFeatures & BlockFeature.readOnly == 0)
        #expect(device.offeredFeatures & VirtioFeature.eventIndex != 0)
        #expect(device.offeredFeatures & VirtioFeature.indirectDescriptors != 0)
        #expect(Self.configuration(device, offset: 0, count: 8) == [0, 8, 0, 0, 0, 0, 0, 0])
        #expect(Self.configuration(device, offset: 12, count: 4) == [254, 0, 0, 0])
        #expect(Self.configuration(device, offset: 20, count: 4) == [0, 2, 0, 0])
        #expect(Self.configuration(device, offset: 40, count: 4) == [32, 0, 0, 0])
        #expect(Self.configuration(device, offset: 56, count: 1) == [1])
        #expect(Self.configuration(device, offset: 70, count: 6) == [0, 0, 0, 0, 0, 0])
        #expect(Self.configuration(device, offset: UInt64.max - 1, count: 4) == [0, 0, 0, 0])

        let readOnlyImage = try TemporaryImage(sectors: 2048)
        let readOnly = try VirtioBlockDevice(path: readOnlyImage.path, identifier: "disk1", readOnly: true)
        #expect(readOnly.offeredFeatures & BlockFeature.readOnly != 0)
        #expect(readOnly.offeredFeatures & (BlockFeature.discard | BlockFeature.writeZeroes) == 0)
        #expect(Self.configuration(readOnly, offset: 36, count: 24).allSatisfy { $0 == 0 })
    }

    /// Polls `condition` for up to five seconds (the device works on its own thread).
    static func waitUntil(_ condition: () -> Bool) -> Bool {
        for _ in 0..<5000 {
            if condition() { return true }
            usleep(1000)
        }
        return condition()
    }

    @Test("On its worker thread the device drains a batch of chains and interrupts once")
    func workerBatches() throws {
        let image = try TemporaryImage()
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 4 << 20)])
        let driver = DriverQueue(memory: memory, size: 64)
        let device = try VirtioBlockDevice(path: image.path, identifier: "disk0")
        let interrupt = RecordingInterrupt()
        let notification = try EventFD()
        let features = device.offeredFeatures
        var statuses: [GuestAddress] = []
        var replies: [GuestAddress] = []
        for sector in 0..<8 {
            let header = driver.allocate(16)
            try memory.write(BlockRequestType.read, at: header)
            try memory.write(UInt64(sector), at: header + 8)
            let reply = driver.allocate(512), status = driver.allocate(1)
            try memory.write(UInt8(0xEE), at: status)
            driver.addChain([.init(address: header, length: 16, writable: false), .init(address: reply, length: 512, writable: true),
                             .init(address: status, length: 1, writable: true)])
            statuses.append(status)
            replies.append(reply)
        }
        try device.activate(VirtioActivation(memory: memory, features: features, queues: [
            VirtioQueueActivation(index: 0, queue: try driver.deviceQueue(features: features), notification: notification),
        ], interrupt: interrupt))
        defer { device.reset() }
        try notification.signal()
        #expect(Self.waitUntil { driver.usedIndex == 8 })
        #expect(Self.waitUntil { interrupt.signalledQueues == [0] })
        for (sector, status) in statuses.enumerated() {
            #expect(try memory.read(UInt8.self, at: status) == BlockStatus.ok)
            #expect(try memory.readBytes(at: replies[sector], count: 512) == TemporaryImage.expectedSector(sector))
        }
        #expect(device.counters.requests.load(ordering: .relaxed) == 8)
        #expect(device.counters.notifications.load(ordering: .relaxed) == 1)
        #expect(interrupt.errors.isEmpty)
    }

    @Test("A chain the queue rejects marks the device broken; after a reset it serves again")
    func brokenChainThenReset() throws {
        let image = try TemporaryImage()
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 4 << 20)])
        let driver = DriverQueue(memory: memory, size: 16)
        let device = try VirtioBlockDevice(path: image.path, identifier: "disk0")
        let interrupt = RecordingInterrupt()
        let notification = try EventFD()
        try device.activate(VirtioActivation(memory: memory, features: 0, queues: [
            VirtioQueueActivation(index: 0, queue: try driver.deviceQueue(), notification: notification),
        ], interrupt: interrupt))
        // A descriptor that loops onto itself.
        driver.writeDescriptor(0, address: 0x200000, length: 16, flags: DriverQueue.next, next: 0)
        driver.makeAvailable(0)
        try notification.signal()
        #expect(Self.waitUntil { interrupt.errors.count == 1 })
        #expect(interrupt.errors.first?.contains("virtio-blk disk0") == true)
        // Further notifications are ignored, not crashes or more reports.
        try notification.signal()
        usleep(20_000)
        #expect(interrupt.errors.count == 1)
        #expect(driver.usedIndex == 0)
        device.reset()

        let fresh = DriverQueue(memory: memory, size: 16, base: GuestAddress(0x100000))
        try device.activate(VirtioActivation(memory: memory, features: 0, queues: [
            VirtioQueueActivation(index: 0, queue: try fresh.deviceQueue(), notification: notification),
        ], interrupt: interrupt))
        defer { device.reset() }
        let header = fresh.allocate(16), status = fresh.allocate(1)
        try memory.write(BlockRequestType.flush, at: header)
        try memory.write(UInt8(0xEE), at: status)
        fresh.addChain([.init(address: header, length: 16, writable: false), .init(address: status, length: 1, writable: true)])
        try notification.signal()
        #expect(Self.waitUntil { fresh.usedIndex == 1 })
        #expect(try memory.read(UInt8.self, at: status) == BlockStatus.ok)
    }

    @Test("Activation without queue 0 fails with a message naming the device")
    func activationWithoutQueue() throws {
        let image = try TemporaryImage()
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)])
        let device = try VirtioBlockDevice(path: image.path, identifier: "data")
        #expect(throws: VirtioDeviceError.self) {
            try device.activate(VirtioActivation(memory: memory, features: 0, queues: [], interrupt: RecordingInterrupt()))
        }
    }
}
