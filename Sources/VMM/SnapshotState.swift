import GuestMemory
import KVM
import MMDS
import RateLimiter
import SnapshotFormat
import VirtioBlock
import VirtioNet

/// The sections of a snapshot state file the VMM writes, beside the
/// devices' own (docs/snapshots.md, "State file sections").
enum SnapshotSectionTag {
    /// The VM configuration the restore rebuilds the machine from.
    static let configuration = SectionTag("VCFG")
    /// One per vCPU, in id order: its `VCPUState`.
    static let vcpu = SectionTag("VCPU")
    /// The VM-wide KVM state (`VMState`).
    static let vm = SectionTag("KVMV")
}

/// Limits for decoding: far above anything a real VM writes, low enough that
/// a damaged file cannot make the VMM allocate much.
enum SnapshotLimits {
    static let path = 4096
    static let text = 65536
    static let devices = 64
    /// Kernel structures: an XSAVE area is the largest, a few KiB (more with AMX).
    static let kernelStructure = 1 << 20
    static let msrs = 4096
    static let vcpus = 254
}

/// A snapshot's state file decoded: everything but guest RAM.
public struct SavedMachine: Sendable {
    /// The configuration to rebuild (disk sizes are beside it in `diskSizes`).
    public var configuration: VMConfiguration
    /// Each disk's size in bytes when the snapshot was taken, by disk id.
    public var diskSizes: [String: UInt64]
    public var kvmState: MachineKVMState
    public var memoryLayout: GuestMemoryFileLayout
    /// The devices' sections (everything the VMM itself does not read).
    public var deviceSections: [SnapshotSection]

    public init(configuration: VMConfiguration, diskSizes: [String: UInt64], kvmState: MachineKVMState,
                memoryLayout: GuestMemoryFileLayout, deviceSections: [SnapshotSection]) {
        self.configuration = configuration
        self.diskSizes = diskSizes
        self.kvmState = kvmState
        self.memoryLayout = memoryLayout
        self.deviceSections = deviceSections
    }

    /// Reads and checks the state file at `path`: the file's own checks
    /// (size, magic, version, checksum, host CPU), then every section.
    public static func read(from path: String) throws(VMMError) -> SavedMachine {
        let file: SnapshotFile
        do {
            file = try SnapshotFile.read(from: path)
        } catch {
            throw .snapshotFile(path: path, cause: error)
        }
        return try SavedMachine(file, path: path)
    }

    /// Decodes every section of an already read state file (`path` names it in errors).
    public init(_ file: SnapshotFile, path: String) throws(VMMError) {
        func required(_ tag: SectionTag) throws(VMMError) -> SnapshotSection {
            guard let section = file.section(tag) else { throw .snapshotSectionMissing(path: path, tag: "\(tag)") }
            return section
        }
        func decode<T>(_ section: SnapshotSection, _ body: (inout StateDecoder) throws(StateDecodingError) -> T) throws(VMMError) -> T {
            var decoder = section.decoder()
            do {
                let value = try body(&decoder)
                try decoder.finish()
                return value
            } catch {
                throw .snapshotSection(path: path, tag: "\(section.tag)", cause: error)
            }
        }
        (configuration, diskSizes) = try decode(try required(SnapshotSectionTag.configuration)) { (decoder) throws(StateDecodingError) in
            try VMConfiguration.decode(from: &decoder)
        }
        let vcpus = try file.sections.filter { $0.tag == SnapshotSectionTag.vcpu }.map { (section) throws(VMMError) -> VCPUState in
            try decode(section) { (decoder) throws(StateDecodingError) in try VCPUState.decode(from: &decoder) }
        }
        let vm = try decode(try required(SnapshotSectionTag.vm)) { (decoder) throws(StateDecodingError) in try VMState.decode(from: &decoder) }
        kvmState = MachineKVMState(vcpus: vcpus, vm: vm)
        memoryLayout = try decode(try required(GuestMemoryFileLayout.sectionTag)) { (decoder) throws(StateDecodingError) in
            try GuestMemoryFileLayout(decoding: &decoder)
        }
        let own: Set<SectionTag> = [SnapshotSectionTag.configuration, SnapshotSectionTag.vcpu, SnapshotSectionTag.vm, GuestMemoryFileLayout.sectionTag]
        deviceSections = file.sections.filter { !own.contains($0.tag) }
    }

    /// The checks a load makes on the decoded values before they size
    /// anything (`VirtualMachine(loading:memoryPath:)` runs them first): the
    /// configuration's own validation, the vCPU list against its count, the
    /// memory layout against its RAM plan.
    public func checkBeforeLoad() throws(VMMError) {
        try configuration.validate()
        try VirtualMachine.checkRestorable(kvmState, memoryLayout.regions.map { ($0.start.rawValue, $0.size) }, configuration: configuration)
    }

    /// The state file's sections: configuration, vCPUs, VM, memory layout, devices.
    public func sections() -> [SnapshotSection] {
        var sections = [SnapshotSection(tag: SnapshotSectionTag.configuration) { configuration.encode(into: &$0, diskSizes: diskSizes) }]
        sections += kvmState.vcpus.map { vcpu in SnapshotSection(tag: SnapshotSectionTag.vcpu) { vcpu.encode(into: &$0) } }
        sections.append(SnapshotSection(tag: SnapshotSectionTag.vm) { kvmState.vm.encode(into: &$0) })
        sections.append(SnapshotSection(tag: GuestMemoryFileLayout.sectionTag) { memoryLayout.encode(into: &$0) })
        return sections + deviceSections
    }
}

// MARK: Encoding

extension StateDecoder {
    /// One byte that must be in `values`, for enums stored as a number.
    mutating func decodeEnum<T>(_ what: String, _ values: [UInt8: T]) throws(StateDecodingError) -> T {
        let start = offset
        guard let value = values[try decode(UInt8.self)] else { throw .invalidValue(offset: start, what: what) }
        return value
    }

    mutating func decodePath() throws(StateDecodingError) -> String { try decodeString(maximumLength: SnapshotLimits.path) }

    mutating func decodeOptional<T>(_ body: (inout StateDecoder) throws(StateDecodingError) -> T) throws(StateDecodingError) -> T? {
        try decodeBool() ? try body(&self) : nil
    }
}

extension StateEncoder {
    mutating func encodeOptional<T>(_ value: T?, _ body: (inout StateEncoder, T) -> Void) {
        encode(value != nil)
        if let value { body(&self, value) }
    }
}

extension VCPUState {
    /// id, the FPU format, each kernel structure as length-prefixed bytes,
    /// XCRs optional, MSRs as (index, value) pairs.
    func encode(into encoder: inout StateEncoder) {
        encoder.encode(id)
        encoder.encode(fpuFormat.rawValue)
        for blob in [mpState, regs, sregs, fpu] { encoder.encode(bytes: blob) }
        encoder.encodeOptional(xcrs) { $0.encode(bytes: $1) }
        for blob in [debugRegs, lapic] { encoder.encode(bytes: blob) }
        encoder.encode(array: msrs) { encoder, msr in
            encoder.encode(msr.index)
            encoder.encode(msr.value)
        }
        encoder.encode(bytes: events)
    }

    /// Reads what `encode` wrote; sizes are checked against this host's
    /// structures when restored (`restoreState`).
    static func decode(from decoder: inout StateDecoder) throws(StateDecodingError) -> VCPUState {
        let id = try decoder.decode(UInt32.self)
        let format = try decoder.decodeEnum("FPU format", [FPUFormat.xsave.rawValue: FPUFormat.xsave, FPUFormat.legacyFPU.rawValue: .legacyFPU])
        let limit = SnapshotLimits.kernelStructure
        let mpState = try decoder.decodeBytes(maximumLength: limit), regs = try decoder.decodeBytes(maximumLength: limit)
        let sregs = try decoder.decodeBytes(maximumLength: limit), fpu = try decoder.decodeBytes(maximumLength: limit)
        let xcrs = try decoder.decodeOptional { (decoder) throws(StateDecodingError) in try decoder.decodeBytes(maximumLength: limit) }
        let debugRegs = try decoder.decodeBytes(maximumLength: limit), lapic = try decoder.decodeBytes(maximumLength: limit)
        let msrs = try decoder.decodeArray(maximumCount: SnapshotLimits.msrs, minimumElementSize: 12) { (decoder) throws(StateDecodingError) in
            MSREntry(index: try decoder.decode(), value: try decoder.decode())
        }
        let events = try decoder.decodeBytes(maximumLength: limit)
        return VCPUState(id: id, mpState: mpState, regs: regs, sregs: sregs, fpuFormat: format, fpu: fpu, xcrs: xcrs,
                         debugRegs: debugRegs, lapic: lapic, msrs: msrs, events: events)
    }
}

extension VMState {
    func encode(into encoder: inout StateEncoder) {
        for blob in [picMaster, picSlave, ioAPIC, pit, clock] { encoder.encode(bytes: blob) }
    }

    static func decode(from decoder: inout StateDecoder) throws(StateDecodingError) -> VMState {
        let limit = SnapshotLimits.kernelStructure
        return VMState(picMaster: try decoder.decodeBytes(maximumLength: limit), picSlave: try decoder.decodeBytes(maximumLength: limit),
                       ioAPIC: try decoder.decodeBytes(maximumLength: limit), pit: try decoder.decodeBytes(maximumLength: limit),
                       clock: try decoder.decodeBytes(maximumLength: limit))
    }
}

extension RateLimiterConfiguration {
    func encode(into encoder: inout StateEncoder) {
        for bucket in [bandwidth, operations] {
            encoder.encodeOptional(bucket) { encoder, bucket in
                encoder.encode(bucket.size)
                encoder.encode(bucket.oneTimeBurst)
                encoder.encode(bucket.refillTimeMilliseconds)
            }
        }
    }

    static func decode(from decoder: inout StateDecoder) throws(StateDecodingError) -> RateLimiterConfiguration {
        let bucket = { (decoder: inout StateDecoder) throws(StateDecodingError) -> TokenBucketConfiguration in
            TokenBucketConfiguration(size: try decoder.decode(), oneTimeBurst: try decoder.decode(), refillTimeMilliseconds: try decoder.decode())
        }
        return RateLimiterConfiguration(bandwidth: try decoder.decodeOptional(bucket), operations: try decoder.decodeOptional(bucket))
    }
}

extension VMConfiguration {
    /// Every field, in declaration order; each disk with its size in bytes;
    /// then each disk's format and each interface's queue pairs and MTU,
    /// added later and so last (an older file lacks them).
    /// The MMDS attachment keeps its address, interfaces, version and IMDS
    /// compatibility, as Firecracker's MmdsState and network stack state
    /// do; the data store is not saved (Firecracker's neither): the
    /// process that loads the snapshot serves its own.
    func encode(into encoder: inout StateEncoder, diskSizes: [String: UInt64]) {
        encoder.encode(kernelPath)
        encoder.encodeOptional(initrdPath) { $0.encode($1) }
        encoder.encode(commandLine)
        encoder.encode(UInt32(clamping: cpuCount))
        encoder.encode(memorySize)
        switch serial {
        case .stdio: encoder.encode(UInt8(0))
        case let .file(path):
            encoder.encode(UInt8(1))
            encoder.encode(path)
        case .none: encoder.encode(UInt8(2))
        }
        encoder.encode(onReboot.rawValue)
        encoder.encode(console.rawValue)
        encoder.encode(array: networkInterfaces) { encoder, interface in
            encoder.encode(interface.id)
            switch interface.tap {
            case let .name(name):
                encoder.encode(UInt8(0))
                encoder.encode(name)
            case let .descriptor(descriptor):
                encoder.encode(UInt8(1))
                encoder.encode(descriptor)
            }
            // The MAC the guest saw, even when derived from the id and tap: a
            // load that overrides the tap (network_overrides) keeps it.
            encoder.encodeOptional(Optional(interface.effectiveMAC)) { $0.append(raw: $1.octets) }
            encoder.encode(interface.offloads)
            interface.receiveRateLimiter.encode(into: &encoder)
            interface.transmitRateLimiter.encode(into: &encoder)
        }
        encoder.encode(array: disks) { encoder, disk in
            encoder.encode(disk.path)
            encoder.encode(disk.id)
            encoder.encode(disk.readOnly)
            encoder.encode(disk.directIO)
            encoder.encode(disk.serialFromImage)
            disk.rateLimiter.encode(into: &encoder)
            encoder.encode(diskSizes[disk.id] ?? 0)
        }
        encoder.encode(kvmDevicePath)
        encoder.encode(entropyDevice)
        entropyRateLimiter.encode(into: &encoder)
        encoder.encode(bootTimer)
        encoder.encode(transparentHugePages)
        encoder.encode(transport.rawValue)
        encoder.encodeOptional(vsock) { encoder, vsock in
            encoder.encode(vsock.guestCID)
            encoder.encode(vsock.udsPath)
        }
        encoder.encodeOptional(metadataService) { encoder, attachment in
            encoder.encode(attachment.address.value)
            encoder.encode(array: attachment.interfaceIDs) { $0.encode($1) }
            // Firecracker's MmdsState: the version and IMDS compatibility (not the data store).
            encoder.encode(attachment.service.version == .v2 ? UInt8(2) : UInt8(1))
            encoder.encode(attachment.service.imdsCompatible)
        }
        // Each disk's format (0 probed, 1 raw, 2 qcow2), last: a state file
        // written before formats were saved ends before it, and probes.
        encoder.encode(array: disks) { encoder, disk in
            encoder.encode(UInt8(disk.format == .raw ? 1 : disk.format == .qcow2 ? 2 : 0))
        }
        // Each interface's queue pairs and MTU (0: none), after the disk
        // formats: a state file written before they were saved ends
        // before them, and its interfaces have one pair and no MTU.
        encoder.encode(array: networkInterfaces) { encoder, interface in
            encoder.encode(UInt16(clamping: interface.queues))
            encoder.encode(interface.mtu ?? 0)
        }
    }

    /// Reads what `encode` wrote. The MMDS attachment comes back with a
    /// fresh service configured with the saved version and IMDS flag; a
    /// loader with its own configures that one the same way and uses it.
    static func decode(from decoder: inout StateDecoder) throws(StateDecodingError) -> (VMConfiguration, [String: UInt64]) {
        func rawEnum<T: RawRepresentable<String>>(_ what: String, _ type: T.Type) throws(StateDecodingError) -> T {
            let start = decoder.offset
            guard let value = T(rawValue: try decoder.decodeString(maximumLength: 64)) else { throw .invalidValue(offset: start, what: what) }
            return value
        }
        let kernel = try decoder.decodePath()
        let initrd = try decoder.decodeOptional { (decoder) throws(StateDecodingError) in try decoder.decodePath() }
        let commandLine = try decoder.decodeString(maximumLength: SnapshotLimits.text)
        let cpus = Int(try decoder.decode(UInt32.self))
        let memory = try decoder.decode(UInt64.self)
        let serialStart = decoder.offset
        let serial: SerialMode
        switch try decoder.decode(UInt8.self) {
        case 0: serial = .stdio
        case 1: serial = .file(path: try decoder.decodePath())
        case 2: serial = .none
        default: throw .invalidValue(offset: serialStart, what: "serial mode")
        }
        var configuration = VMConfiguration(kernelPath: kernel, initrdPath: initrd, commandLine: commandLine, cpuCount: cpus,
                                            memorySize: memory, serial: serial, onReboot: try rawEnum("reboot action", RebootAction.self))
        configuration.console = try rawEnum("console kind", ConsoleKind.self)
        configuration.networkInterfaces = try decoder.decodeArray(maximumCount: SnapshotLimits.devices, minimumElementSize: 8) {
            (decoder) throws(StateDecodingError) -> NetworkInterfaceConfiguration in
            let id = try decoder.decodeString(maximumLength: SnapshotLimits.text)
            let tap = try decoder.decodeEnum("tap kind", [0: false, 1: true]) ? NetworkInterfaceConfiguration.Tap.descriptor(try decoder.decode(Int32.self))
                : .name(try decoder.decodeString(maximumLength: 64))
            let mac = try decoder.decodeOptional { (decoder) throws(StateDecodingError) -> MACAddress? in
                let start = decoder.offset
                let octets = try decoder.take(6)
                let text = octets.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
                guard let address = try? MACAddress(parsing: text) else { throw .invalidValue(offset: start, what: "MAC address") }
                return address
            } ?? nil
            var interface = NetworkInterfaceConfiguration(id: id, tap: tap, mac: mac, offloads: try decoder.decodeBool())
            interface.receiveRateLimiter = try RateLimiterConfiguration.decode(from: &decoder)
            interface.transmitRateLimiter = try RateLimiterConfiguration.decode(from: &decoder)
            return interface
        }
        var sizes: [String: UInt64] = [:]
        configuration.disks = try decoder.decodeArray(maximumCount: SnapshotLimits.devices, minimumElementSize: 8) {
            (decoder) throws(StateDecodingError) -> DiskConfiguration in
            let path = try decoder.decodePath(), id = try decoder.decodeString(maximumLength: SnapshotLimits.text)
            let disk = DiskConfiguration(path: path, id: id, readOnly: try decoder.decodeBool(), directIO: try decoder.decodeBool(),
                                         serialFromImage: try decoder.decodeBool(), rateLimiter: try RateLimiterConfiguration.decode(from: &decoder))
            sizes[id] = try decoder.decode(UInt64.self)
            return disk
        }
        configuration.kvmDevicePath = try decoder.decodePath()
        configuration.entropyDevice = try decoder.decodeBool()
        configuration.entropyRateLimiter = try RateLimiterConfiguration.decode(from: &decoder)
        configuration.bootTimer = try decoder.decodeBool()
        configuration.transparentHugePages = try decoder.decodeBool()
        configuration.transport = try rawEnum("virtio transport", VirtioTransportKind.self)
        configuration.vsock = try decoder.decodeOptional { (decoder) throws(StateDecodingError) in
            VsockConfiguration(guestCID: try decoder.decode(), udsPath: try decoder.decodePath())
        }
        configuration.metadataService = try decoder.decodeOptional { (decoder) throws(StateDecodingError) in
            let address = IPv4Address(try decoder.decode(UInt32.self))
            let ids = try decoder.decodeArray(maximumCount: SnapshotLimits.devices, minimumElementSize: 4) { (decoder) throws(StateDecodingError) in
                try decoder.decodeString(maximumLength: SnapshotLimits.text)
            }
            // The version and IMDS flag end the section; a state file written before they were saved lacks them (V1, JSON allowed).
            let service = MetadataService()
            if !decoder.isAtEnd {
                let version = try decoder.decodeEnum("MMDS version", [1: MMDSVersion.v1, 2: .v2])
                service.configure(version: version, imdsCompatible: try decoder.decodeBool())
            }
            return MetadataServiceAttachment(service: service, address: address, interfaceIDs: ids)
        }
        if !decoder.isAtEnd {
            let start = decoder.offset
            let formats = try decoder.decodeArray(maximumCount: SnapshotLimits.devices) { (decoder) throws(StateDecodingError) -> DiskFormat? in
                try decoder.decodeEnum("disk format", [0: nil, 1: .raw, 2: .qcow2])
            }
            guard formats.count == configuration.disks.count else { throw .invalidValue(offset: start, what: "disk format count") }
            for (index, format) in formats.enumerated() { configuration.disks[index].format = format }
        }
        if !decoder.isAtEnd {
            let start = decoder.offset
            let shapes = try decoder.decodeArray(maximumCount: SnapshotLimits.devices, minimumElementSize: 4) {
                (decoder) throws(StateDecodingError) -> (queues: Int, mtu: UInt16?) in
                let queuesOffset = decoder.offset
                let queues = Int(try decoder.decode(UInt16.self))
                guard NetworkInterfaceConfiguration.queueRange.contains(queues) else {
                    throw .invalidValue(offset: queuesOffset, what: "network interface queue pairs \(queues) (1 to \(NetworkInterfaceConfiguration.queueRange.upperBound))")
                }
                let mtuOffset = decoder.offset
                let mtu = try decoder.decode(UInt16.self)
                guard mtu == 0 || VirtioNetDevice.mtuRange.contains(Int(mtu)) else {
                    throw .invalidValue(offset: mtuOffset, what: "network interface MTU \(mtu) (0 for none, or \(VirtioNetDevice.mtuRange.lowerBound) to \(VirtioNetDevice.mtuRange.upperBound))")
                }
                return (queues, mtu == 0 ? nil : mtu)
            }
            guard shapes.count == configuration.networkInterfaces.count else {
                throw .invalidValue(offset: start, what: "queue and MTU list of \(shapes.count) network interfaces (\(configuration.networkInterfaces.count) configured)")
            }
            for (index, shape) in shapes.enumerated() {
                configuration.networkInterfaces[index].queues = shape.queues
                configuration.networkInterfaces[index].mtu = shape.mtu
            }
        }
        return (configuration, sizes)
    }
}
