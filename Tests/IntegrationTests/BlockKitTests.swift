import Foundation
import Testing
@testable import VMM

/// The kit's `virtio-blk` program (guest-kit/programs/virtio-blk.c) against
/// the device: a ring-3 virtio-pci driver, so each boot takes well under a
/// second, and it can send chains Linux never would.
@Suite("virtio-blk with the kit driver", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason),
       .enabled(if: BlockKitProgram.exists, "the kit has no virtio-blk program yet (guest-kit/programs/virtio-blk.c)"))
struct BlockKitTests {
    /// An image in the kit's pattern: every 64-bit little-endian word of sector L is L.
    static func patternImage(sectors: Int = 1024) throws -> BlockTestImage {
        let image = try BlockTestImage(megabytes: 1, name: "kit")
        var bytes = Data(count: sectors * 512)
        bytes.withUnsafeMutableBytes { raw in
            for sector in 0..<sectors {
                for word in 0..<64 { raw.storeBytes(of: UInt64(sector).littleEndian, toByteOffset: sector * 512 + word * 8, as: UInt64.self) }
            }
        }
        try bytes.write(to: image.url)
        return image
    }

    static func boot(_ cmdline: String, disks: [DiskConfiguration], transport: VirtioTransportKind = .pci) throws -> (VMExitReason, String) {
        var configuration = VMConfiguration(kernelPath: try KitGuest.program("virtio-blk"), commandLine: cmdline, serial: .none)
        configuration.disks = disks
        configuration.transport = transport
        let output = CapturingSerialOutput()
        let machine = try VirtualMachine(configuration: configuration, serialOutput: output)
        let reason = try machine.run()
        return (reason, output.text)
    }

    @Test("Reads the host's pattern, writes and flushes, GET_ID, discard and write-zeroes; the image shows the writes",
          arguments: VirtioTransportKind.allCases)
    func functional(transport: VirtioTransportKind) throws {
        let image = try Self.patternImage()
        let (reason, text) = try Self.boot("id=kit-disk pattern=1 write_lba=64 discard_lba=128 zeroes_lba=200",
                                           disks: [DiskConfiguration(path: image.path, id: "kit-disk")], transport: transport)
        #expect(reason == .poweredOff, "\(text)")
        #expect(text.contains("virtio ready transport=\(transport)"), "\(text)")
        #expect(text.contains("KIT virtio-blk id ok"), "\(text)")
        #expect(text.contains("KIT virtio-blk pattern lba=0 count=8 last=1023 ok"))
        #expect(text.contains("KIT virtio-blk write lba=64 count=8 flush=ok readback=ok"))
        #expect(text.contains("KIT virtio-blk discard lba=128 count=8 ok"))
        #expect(text.contains("KIT virtio-blk write-zeroes lba=200 count=8 ok"))
        #expect(text.contains("KIT virtio-blk PASS"))
        let written = try image.bytes(at: 64 * 512, count: 8 * 512)
        let expected = (64..<72).flatMap { sector in
            (0..<64).flatMap { _ in withUnsafeBytes(of: (UInt64(sector) ^ 0x5a5a_5a5a_5a5a_5a5a).littleEndian, Array.init) }
        }
        #expect(written == expected)
        #expect(try image.bytes(at: 200 * 512, count: 8 * 512).allSatisfy { $0 == 0 })
    }

    @Test("A read-only disk offers RO and fails a write with IOERR")
    func readOnly() throws {
        let image = try Self.patternImage()
        let before = try image.contents()
        let (reason, text) = try Self.boot("readonly=1 pattern=1", disks: [DiskConfiguration(path: image.path, id: "disk0", readOnly: true)])
        #expect(reason == .poweredOff, "\(text)")
        #expect(text.contains("KIT virtio-blk readonly write status=1 (ioerr)"), "\(text)")
        #expect(text.contains("KIT virtio-blk PASS"))
        #expect(try image.contents() == before)
    }

    @Test("Hostile chains make the device need a reset; the VMM stays up and a reset brings the device back",
          arguments: ["loop", "oob", "zerolen", "oversize", "wrongdir"], VirtioTransportKind.allCases)
    func hostile(kind: String, transport: VirtioTransportKind) throws {
        let image = try Self.patternImage()
        let before = try image.contents()
        let (reason, text) = try Self.boot("pattern=1 hostile=\(kind)", disks: [DiskConfiguration(path: image.path, id: "disk0")],
                                           transport: transport)
        #expect(reason == .poweredOff, "\(text)")
        // Each of these breaks the virtqueue protocol: DEVICE_NEEDS_RESET, not a request error.
        #expect(text.contains("KIT virtio-blk hostile=\(kind) outcome=needs_reset"), "\(text)")
        #expect(text.contains("KIT virtio-blk hostile=\(kind) recovered read=ok"))
        #expect(text.contains("KIT virtio-blk PASS"))
        #expect(try image.contents() == before)
    }
}

enum BlockKitProgram {
    static var exists: Bool {
        FileManager.default.fileExists(atPath: KitGuest.kitDirectory.appendingPathComponent("programs/virtio-blk.c").path)
    }
}
