import Glibc
import HostSystem
import QCOW2
import Testing
import Virtio
@testable import VirtioBlock

@Suite("virtio-blk on qcow2 images")
struct BlockQCOW2Tests {
    /// A TemporaryImage whose file is replaced by an empty qcow2 image of `size` bytes.
    func qcow2Image(size: UInt64 = 1 << 20) throws -> TemporaryImage {
        let image = try TemporaryImage(sectors: 1)
        unlink(image.path)
        try QCOW2Image.create(path: image.path, virtualSize: size)
        return image
    }

    @Test("A qcow2 image is probed, sized by its virtual size, and serves writes, reads, flush, discard and write-zeroes")
    func requests() throws {
        let rig = try BlockRig(image: try qcow2Image())
        #expect(rig.processor.disk.format == .qcow2)
        #expect(rig.processor.disk.capacityInSectors == 2048)
        let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let write = try rig.submit(type: BlockRequestType.write, sector: 130, data: [Array(pattern[..<300]), Array(pattern[300...])])
        #expect(write.status == BlockStatus.ok)
        #expect(try rig.submit(type: BlockRequestType.flush).status == BlockStatus.ok)
        let read = try rig.submit(type: BlockRequestType.read, sector: 130, reply: [100, 924])
        #expect(read.status == BlockStatus.ok)
        #expect(read.reply[0] + read.reply[1] == pattern)
        let unwritten = try rig.submit(type: BlockRequestType.read, sector: 2000, reply: [512])
        #expect(unwritten.reply[0] == [UInt8](repeating: 0, count: 512))
        let zeroes = try rig.submit(type: BlockRequestType.writeZeroes, data: [BlockRig.segment(sector: 131, sectors: 1)])
        #expect(zeroes.status == BlockStatus.ok)
        let discard = try rig.submit(type: BlockRequestType.discard, data: [BlockRig.segment(sector: 0, sectors: 2048)])
        #expect(discard.status == BlockStatus.ok)
        let after = try rig.submit(type: BlockRequestType.read, sector: 130, reply: [1024])
        #expect(after.reply[0] == [UInt8](repeating: 0, count: 1024))
        let beyond = try rig.submit(type: BlockRequestType.read, sector: 2048, reply: [512])
        #expect(beyond.status == BlockStatus.ioError)
    }

    @Test("format=raw shows a qcow2 file's bytes; direct=on and corrupt images are refused with the qcow2 cause")
    func explicitFormats() throws {
        let image = try qcow2Image()
        let raw = try DiskImage(path: image.path, readOnly: true, format: .raw)
        #expect(raw.format == .raw)
        #expect(raw.size == 4 << 16)
        #expect(throws: VirtioBlockError.directIOUnsupported(path: image.path, format: "qcow2")) {
            try DiskImage(path: image.path, readOnly: true, directIO: true, format: .qcow2)
        }
        let plain = try TemporaryImage()
        #expect(throws: VirtioBlockError.qcow2(path: plain.path, cause: .badMagic(path: plain.path))) {
            try DiskImage(path: plain.path, format: .qcow2)
        }
        #expect(try DiskImage(path: plain.path).format == .raw)
    }

    @Test("On an image probed as raw, a write of the qcow2 magic to sector 0 fails; with format=raw it goes through")
    func probedRawGuard() throws {
        var header = [UInt8](repeating: 0, count: 512)
        header[0...3] = [0x51, 0x46, 0x49, 0xfb]
        let probed = try BlockRig()
        // Split after two bytes: the check sees the whole magic across buffers.
        let refused = try probed.submit(type: BlockRequestType.write, sector: 0, data: [Array(header[..<2]), Array(header[2...])])
        #expect(refused.status == BlockStatus.ioError)
        #expect(refused.outcome.error == .probedFormatChange(path: probed.image.path))
        #expect(try probed.image.contents()[0..<4] != header[0..<4])
        #expect(try probed.submit(type: BlockRequestType.write, sector: 1, data: [header]).status == BlockStatus.ok)

        let image = try TemporaryImage()
        let explicit = try BlockRequestProcessor(disk: DiskImage(path: image.path, format: .raw), memory: probed.memory, features: 0,
                                                 identifier: [UInt8](repeating: 0, count: 20), counters: probed.counters)
        let address = probed.driver.allocate(512)
        try probed.memory.write(bytes: header, at: address)
        try explicit.disk.write(at: 0, from: [GuestBuffer(address: address, length: 512)], memory: probed.memory)
        #expect(try image.contents()[0..<4] == header[0..<4])
    }
}
