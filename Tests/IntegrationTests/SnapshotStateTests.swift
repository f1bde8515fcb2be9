import GuestMemory
import KVM
import LeanJSON
import MMDS
import RateLimiter
import SnapshotFormat
import Testing
@testable import VMM

/// The VMM's sections of a snapshot state file, without KVM: what is
/// written comes back equal, and damage is refused naming the section.
@Suite("Snapshot state sections")
struct SnapshotStateTests {
    static func machine() throws -> SavedMachine {
        var configuration = VMConfiguration(kernelPath: "/k/vmlinux", initrdPath: "/k/initrd", commandLine: "console=ttyS0 x=1",
                                            cpuCount: 2, memorySize: 256 << 20, serial: .file(path: "/tmp/s.log"), onReboot: .restart)
        configuration.console = .virtio
        configuration.transport = .mmio
        var interface = try NetworkInterfaceConfiguration.make(id: "eth0", tapName: "tap0", tapDescriptor: nil, mac: "52:54:00:12:34:56", offloads: false)
        interface.receiveRateLimiter = RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 1000, oneTimeBurst: 5, refillTimeMilliseconds: 100))
        configuration.networkInterfaces = [interface, NetworkInterfaceConfiguration(id: "eth1", tap: .name("tap1"), queues: 4, mtu: 9000)]
        configuration.disks = [DiskConfiguration(path: "/d/root.img", id: "rootfs", readOnly: true, directIO: true, serialFromImage: true,
                                                 rateLimiter: RateLimiterConfiguration(operations: TokenBucketConfiguration(size: 10, refillTimeMilliseconds: 1000))),
                               DiskConfiguration(path: "/d/data.qcow2", id: "data", format: .qcow2)]
        configuration.entropyDevice = true
        configuration.bootTimer = true
        configuration.transparentHugePages = true
        configuration.vsock = VsockConfiguration(guestCID: 7, udsPath: "/tmp/v.sock")
        let service = MetadataService()
        service.configure(version: .v2, imdsCompatible: true)
        configuration.metadataService = MetadataServiceAttachment(service: service, address: IPv4Address(169, 254, 1, 2), interfaceIDs: ["eth0"])
        let vcpus = (0..<2).map { id in
            VCPUState(id: UInt32(id), mpState: [1, 2, 3, 4], regs: [UInt8](repeating: 5, count: 144), sregs: [6], fpuFormat: .xsave,
                      fpu: [UInt8](repeating: 7, count: 4096), xcrs: id == 0 ? [8, 9] : nil, debugRegs: [10], lapic: [11],
                      msrs: [.init(index: 0x10, value: 123_456_789), .init(index: 0x6E0, value: 1)], events: [12])
        }
        let vm = VMState(picMaster: [1], picSlave: [2], ioAPIC: [3], pit: [4], clock: [5])
        let layout = GuestMemoryFileLayout(regions: [.init(start: GuestAddress(0), size: 256 << 20, fileOffset: 0)])
        let device = SnapshotSection(tag: SectionTag("VBLK")) { $0.encode(UInt32(42)) }
        return SavedMachine(configuration: configuration, diskSizes: ["rootfs": 1 << 20, "data": 0], kvmState: MachineKVMState(vcpus: vcpus, vm: vm),
                            memoryLayout: layout, deviceSections: [device])
    }

    @Test("configuration, vCPUs, VM state, memory layout and device sections come back equal through a state file")
    func roundTrip() throws {
        let saved = try Self.machine()
        let bytes = try SnapshotFile(sections: saved.sections()).encoded()
        let again = try SavedMachine(SnapshotFile.decode(bytes, host: .current), path: "state")
        var expected = saved.configuration
        // The MMDS service is the loader's; its configuration is saved, not its data.
        expected.metadataService = again.configuration.metadataService
        // An interface without a MAC is saved with the one derived for it.
        expected.networkInterfaces[1].mac = saved.configuration.networkInterfaces[1].effectiveMAC
        #expect(again.configuration == expected)
        #expect(again.configuration.metadataService?.address == IPv4Address(169, 254, 1, 2))
        #expect(again.configuration.metadataService?.interfaceIDs == ["eth0"])
        #expect(again.configuration.metadataService?.service.version == .v2)
        #expect(again.configuration.metadataService?.service.imdsCompatible == true)
        #expect(again.diskSizes == ["rootfs": 1 << 20, "data": 0])
        #expect(again.kvmState == saved.kvmState)
        #expect(again.memoryLayout == saved.memoryLayout)
        #expect(again.deviceSections.map(\.tag) == [SectionTag("VBLK")])
        #expect(again.deviceSections.first.map { Array($0.body) } == [42, 0, 0, 0])
    }

    @Test("a MAC derived from the interface's id and tap stays the guest's when a load overrides the tap")
    func derivedMACSurvivesTapOverride() throws {
        let saved = try Self.machine()
        let guestMAC = saved.configuration.networkInterfaces[1].effectiveMAC
        let bytes = try SnapshotFile(sections: saved.sections()).encoded()
        var loaded = try SavedMachine(SnapshotFile.decode(bytes, host: .current), path: "state").configuration.networkInterfaces[1]
        loaded.tap = .name("tap-of-the-clone")
        #expect(loaded.effectiveMAC == guestMAC)
        #expect(NetworkInterfaceConfiguration(id: "eth1", tap: .name("tap-of-the-clone")).effectiveMAC != guestMAC)
    }

    /// The bytes of the interfaces' queue pairs and MTUs that end VCFG.
    static func interfacesLength(_ saved: SavedMachine) -> Int {
        4 + 4 * saved.configuration.networkInterfaces.count
    }

    /// The bytes of the disk formats and what follows them to VCFG's end.
    static func formatsLength(_ saved: SavedMachine) -> Int {
        var encoder = StateEncoder()
        encoder.encode(array: saved.configuration.disks) { encoder, _ in encoder.encode(UInt8(0)) }
        return encoder.bytes.count + interfacesLength(saved)
    }

    @Test("disk formats come back; a VCFG written before formats were saved probes every disk")
    func diskFormats() throws {
        let saved = try Self.machine()
        let sections = saved.sections()
        #expect(try SavedMachine(SnapshotFile(sections: sections), path: "state").configuration.disks.map(\.format) == [nil, .qcow2])
        var older = sections
        older[0] = SnapshotSection(tag: older[0].tag, body: older[0].body.dropLast(Self.formatsLength(saved)))
        #expect(try SavedMachine(SnapshotFile(sections: older), path: "state").configuration.disks.map(\.format) == [nil, nil])
        var bad = sections
        var body = Array(sections[0].body)
        body[body.count - 1 - Self.interfacesLength(saved)] = 9
        bad[0] = SnapshotSection(tag: sections[0].tag, body: body[...])
        #expect(throws: VMMError.self) { try SavedMachine(SnapshotFile(sections: bad), path: "state") }
    }

    @Test("each interface's queue pairs and MTU come back; a VCFG written before they were saved has one pair and no MTU; bad values are refused")
    func interfaceQueuesAndMTU() throws {
        let saved = try Self.machine()
        let sections = saved.sections()
        let loaded = try SavedMachine(SnapshotFile(sections: sections), path: "state").configuration.networkInterfaces
        #expect(loaded.map(\.queues) == [1, 4] && loaded.map(\.mtu) == [nil, 9000], "\(loaded)")
        var older = sections
        older[0] = SnapshotSection(tag: older[0].tag, body: older[0].body.dropLast(Self.interfacesLength(saved)))
        let old = try SavedMachine(SnapshotFile(sections: older), path: "state").configuration
        #expect(old.networkInterfaces.map(\.queues) == [1, 1] && old.networkInterfaces.map(\.mtu) == [nil, nil], "\(old.networkInterfaces)")
        #expect(old.disks.map(\.format) == [nil, .qcow2], "the disk formats before them still read")
        func refusal(_ change: (inout [UInt8], Int) -> Void) -> String? {
            var body = Array(sections[0].body)
            change(&body, body.count - Self.interfacesLength(saved))
            var damaged = sections
            damaged[0] = SnapshotSection(tag: sections[0].tag, body: body[...])
            do {
                _ = try SavedMachine(SnapshotFile(sections: damaged), path: "state")
                return nil
            } catch {
                return "\(error)"
            }
        }
        // The list: count (UInt32), then per interface queue pairs and MTU (UInt16 each).
        #expect(refusal { body, start in body[start + 8] = 17 }?.contains("queue pairs 17 (1 to 16)") == true)
        #expect(refusal { body, start in body[start + 8] = 0 }?.contains("queue pairs 0 (1 to 16)") == true)
        #expect(refusal { body, start in body[start + 10] = 67; body[start + 11] = 0 }?.contains("MTU 67 (0 for none, or 68 to 65535)") == true)
        #expect(refusal { body, start in body[start] = 1; body.removeLast(4) }?.contains("queue and MTU list of 1 network interfaces (2 configured)") == true)
        #expect(refusal { body, _ in body.removeLast() } != nil, "a truncated list")
    }

    @Test("MMDS as Firecracker saves it: version and IMDS flag come back, the data store does not; a VCFG without them reads as V1")
    func mmdsConfiguration() throws {
        let saved = try Self.machine()
        try saved.configuration.metadataService?.service.put(.object([(key: "latest", value: .string("secret"))]))
        #expect(saved.configuration.metadataService?.service.contents != nil)
        let sections = saved.sections()
        let loaded = try SavedMachine(SnapshotFile(sections: sections), path: "state").configuration.metadataService
        #expect(loaded?.service.version == .v2 && loaded?.service.imdsCompatible == true)
        #expect(loaded?.service !== saved.configuration.metadataService?.service)
        #expect(loaded != nil && loaded?.service.contents == nil, "the data store is not saved")

        // A state file written before the version was saved: its VCFG ends after the interface ids
        // (and so has no disk formats, which come after).
        var older = sections
        older[0] = SnapshotSection(tag: older[0].tag, body: older[0].body.dropLast(2 + Self.formatsLength(saved)))
        let old = try SavedMachine(SnapshotFile(sections: older), path: "state").configuration.metadataService
        #expect(old?.service.version == .v1 && old?.service.imdsCompatible == false && old?.interfaceIDs == ["eth0"])
        // A version other than 1 or 2 is refused.
        var badVersion = sections
        var body = Array(sections[0].body)
        body[body.count - 2 - Self.formatsLength(saved)] = 3
        badVersion[0] = SnapshotSection(tag: sections[0].tag, body: body[...])
        #expect(throws: VMMError.self) { try SavedMachine(SnapshotFile(sections: badVersion), path: "state") }
    }

    @Test("a missing or damaged section is refused naming the section")
    func damaged() throws {
        let saved = try Self.machine()
        let withoutVM = saved.sections().filter { $0.tag != SectionTag("KVMV") }
        do {
            _ = try SavedMachine(SnapshotFile(sections: withoutVM), path: "state")
            Issue.record("accepted a state file without KVMV")
        } catch {
            #expect("\(error)" == "snapshot state has no 'KVMV' section (not written by this VMM?)")
        }
        var sections = saved.sections()
        sections[0] = SnapshotSection(tag: sections[0].tag, body: sections[0].body.dropLast(3))
        do {
            _ = try SavedMachine(SnapshotFile(sections: sections), path: "state")
            Issue.record("accepted a truncated VCFG")
        } catch {
            #expect("\(error)".hasPrefix("snapshot state: section 'VCFG' is malformed: "), "\(error)")
        }
        var badFormat = saved.sections()
        let vcpu = try #require(badFormat.firstIndex { $0.tag == SectionTag("VCPU") })
        var body = Array(badFormat[vcpu].body)
        body[4] = 9  // the FPU format byte, after the UInt32 id
        badFormat[vcpu] = SnapshotSection(tag: SectionTag("VCPU"), body: body[...])
        do {
            _ = try SavedMachine(SnapshotFile(sections: badFormat), path: "state")
            Issue.record("accepted FPU format 9")
        } catch {
            #expect("\(error)".contains("invalid FPU format"), "\(error)")
        }
    }
}
