import Foundation
import Glibc
import SnapshotFormat
import Testing
import Devices
@testable import VMM

/// Device state in snapshots: a kit guest writing numbered blocks through
/// virtio-blk (virtio-mmio or virtio-pci) is paused mid-way, its KVM state, RAM and device
/// sections captured, and a new VM built from them over the same image must
/// finish the writes as if never interrupted, printing on the 8250 as before.
@Suite("Device state in snapshots", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct SnapshotDeviceTests {
    static let firstSector = 16
    /// Enough writes that the pause lands among them.
    static let writes = 1500
    /// Past the queue size (128): restored queue indexes that went back to 0
    /// would make the device see a jump of more than a queue's worth.
    static let pauseAfter = 200

    static func configuration(writes: Int = writes, image: BlockTestImage, transport: VirtioTransportKind) throws -> VMConfiguration {
        var configuration = VMConfiguration(kernelPath: try KitGuest.program("virtio-blk"),
                                            commandLine: "seq_lba=\(firstSector) seq_count=\(writes)",
                                            memorySize: 64 << 20, serial: .none, onReboot: .exit)
        configuration.disks = [DiskConfiguration(path: image.path, id: "snap-disk")]
        configuration.transport = transport
        return configuration
    }

    /// Sector `lba` as the kit's seq writes fill it.
    static func written(_ lba: Int) -> [UInt8] {
        (0..<64).flatMap { _ in withUnsafeBytes(of: (UInt64(lba) ^ 0x5e9a_5e9a_5e9a_5e9a).littleEndian, Array.init) }
    }

    /// The indexes of the "seq wrote=I" lines, in order.
    static func completions(_ text: String) -> [Int] {
        text.split(whereSeparator: \.isNewline).compactMap { line in
            guard let range = line.range(of: "KIT virtio-blk seq wrote=") else { return nil }
            return Int(line[range.upperBound...])
        }
    }

    @Test("a guest paused among its block writes and restored into a new VM over the same image finishes them: every completed write is on disk, none repeated or lost, and the serial port prints on",
          arguments: VirtioTransportKind.allCases)
    func blockWritesContinueAfterRestore(transport: VirtioTransportKind) throws {
        let image = try BlockTestImage(megabytes: 1, name: "snap")
        let configuration = try Self.configuration(image: image, transport: transport)

        let originalOutput = CapturingSerialOutput()
        // The original VM is gone before the restore: it holds the image's lock.
        let (state, sections, memory, savedSerial) = try { () throws -> (MachineKVMState, [SnapshotSection], GuestMemoryImage, Serial8250State) in
            let original = try SnapshotKVMTests.Running(VirtualMachine(configuration: configuration, serialOutput: originalOutput))
            #expect(SnapshotKVMTests.waitFor("seq wrote=\(Self.pauseAfter)", in: originalOutput, seconds: 60), "output: \(originalOutput.text)")
            #expect(original.machine.pause())
            let state = try original.machine.captureKVMState()
            let sections = try original.machine.captureDeviceSections()
            let memory = try original.machine.copyGuestMemory()
            let savedSerial = original.machine.serial.captureState()
            #expect(!originalOutput.text.contains("seq done"), "the writes ended before the pause: raise `writes`")
            #expect(sections.map(\.tag) == [SectionTag("SERI"), SectionTag(transport == .mmio ? "VMIO" : "VPCI")])
            #expect(try original.finish(within: 0) == .stoppedByUser)
            return (state, sections, memory, savedSerial)
        }()
        let seenBefore = Self.completions(originalOutput.text)

        // Every write whose completion the guest printed is in the image.
        let lastSeen = try #require(seenBefore.last)
        for index in 0...lastSeen {
            let lba = Self.firstSector + index
            #expect(try image.bytes(at: lba * 512, count: 512) == Self.written(lba), "sector \(lba) (write \(index)) before the restore")
        }

        let restoredOutput = CapturingSerialOutput()
        let machine = try VirtualMachine(configuration: configuration, restoring: state, memoryImage: memory,
                                         deviceSections: sections, serialOutput: restoredOutput)
        #expect(machine.serial.captureState() == savedSerial, "the 8250's registers came back")
        let restored = try SnapshotKVMTests.Running(machine)
        let reason = try restored.finish(within: 120)
        let text = restoredOutput.text
        #expect(reason == .poweredOff, "output: \(text)")
        #expect(text.contains("KIT virtio-blk seq done count=\(Self.writes) readback=ok"), "output: \(text)")
        #expect(text.contains("KIT virtio-blk PASS"), "output: \(text)")
        #expect(!text.contains("NEEDS_RESET") && !text.contains("FAIL"), "output: \(text)")
        // The guest saw each completion once, in order, across the two VMs
        // (a line cut by the pause is finished by the restored VM).
        let completions = Self.completions(originalOutput.text + text)
        let divergence = zip(completions, 0...).first { $0 != $1 }
        #expect(completions.count == Self.writes && divergence == nil,
                "\(completions.count) completions; first out of order: \(divergence.map { "\($0.0) where \($0.1) was due" } ?? "none")")
        for index in 0..<Self.writes {
            let lba = Self.firstSector + index
            guard try image.bytes(at: lba * 512, count: 512) == Self.written(lba) else {
                Issue.record("sector \(lba) (write \(index)) is not the guest's after the restored run")
                break
            }
        }
    }

    @Test("device capture is refused unless the VM is paused")
    func refusesUnpaused() throws {
        let image = try BlockTestImage(megabytes: 1, name: "snap-unpaused")
        let machine = try VirtualMachine(configuration: try Self.configuration(writes: 1, image: image, transport: .mmio),
                                         serialOutput: CapturingSerialOutput())
        #expect { try machine.captureDeviceSections() } throws: { error in
            guard case VMMError.notPaused = error else { return false }
            return true
        }
    }

    @Test("restoring device sections into another device list is refused, naming the device",
          arguments: VirtioTransportKind.allCases)
    func refusesAnotherDeviceList(transport: VirtioTransportKind) throws {
        let image = try BlockTestImage(megabytes: 1, name: "snap-list")
        let configuration = try Self.configuration(writes: 1, image: image, transport: transport)
        // Captured from a VM that never ran, gone before the restores (it holds the image's lock).
        let (state, sections, memory) = try { () throws -> (MachineKVMState, [SnapshotSection], GuestMemoryImage) in
            let source = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
            #expect(source.pause())
            return (try source.captureKVMState(), try source.captureDeviceSections(), try source.copyGuestMemory())
        }()

        var withEntropy = configuration
        withEntropy.entropyDevice = true  // virtio-rng comes first, where the disk was
        #expect {
            _ = try VirtualMachine(configuration: withEntropy, restoring: state, memoryImage: memory, deviceSections: sections,
                                   serialOutput: CapturingSerialOutput())
        } throws: { error in
            guard case let VMMError.snapshotMismatch(part, saved, configured) = error else { return false }
            return part.contains("device 0 (virtio-rng") && saved == "virtio-blk" && configured == "virtio-rng"
        }

        var noDisk = configuration
        noDisk.disks = []
        #expect {
            _ = try VirtualMachine(configuration: noDisk, restoring: state, memoryImage: memory, deviceSections: sections,
                                   serialOutput: CapturingSerialOutput())
        } throws: { error in
            guard case let VMMError.snapshotMismatch(part, saved, configured) = error else { return false }
            return part == "the number of virtio devices" && saved == "1" && configured == "0"
        }

        var truncated = sections
        truncated[1].body = truncated[1].body.dropLast(3)
        #expect {
            _ = try VirtualMachine(configuration: configuration, restoring: state, memoryImage: memory, deviceSections: truncated,
                                   serialOutput: CapturingSerialOutput())
        } throws: { error in
            guard case let VMMError.deviceStateDecoding(device, _) = error else { return false }
            return device.contains("virtio-blk")
        }
    }
}
