import Devices
import FuzzSupport
import Glibc
import GuestMemory
import HostSystem
import KVM
import MMDS
import PCI
import SnapshotFormat
import Synchronization
import Virtio
import VirtioBlock
import VirtioConsole
import VirtioMMIO
import VirtioNet
import VirtioPCI
import VirtioRNG
@_spi(Fuzzing) import VirtioVsock
import VMM

// A snapshot's state file is as trusted as the directory that holds it, so
// every decoder of a device section must turn any bytes into a state or a
// typed error, and restoring a decoded state into a freshly built device
// must refuse (never trap on) a value the device cannot take. The first
// input byte picks the decoder, the rest is the section body:
//
//   0       SERI: the 8250's registers, restored into a UART
//   1 K     VMIO: a virtio-mmio transport over device kind K (blk, net,
//           rng, console, vsock, net with 2 queue pairs and an MTU),
//           decoded and restored (queues started from the saved rings and
//           walking state, in 256 MiB of RAM)
//   2 K     VPCI: the same as a virtio-pci function (configuration space,
//           MSI-X table and pending bits, vectors, ISR)
//   3...7   a device's own state (VBLK, VNET, VRNG, VCON, VVSK) given to
//           that device's restoreSnapshot
//   8       the VMM's sections (VCFG, VCPU, KVMV, GMEM, as a sequence of
//           tagged sections): SavedMachine decodes them and makes the
//           checks a load makes before it sizes anything
//   9       VirtioTransportState with queue counts and maxima from the input
//   10      VNET (with its VNMQ part) given to the multiqueue net device's
//           restoreSnapshot
//
// Each section that decodes must encode back to the bytes it was read from.
// Devices run no worker: the transports see a proxy whose activation does
// nothing and which hands the saved device state to the real device.
//
// SWIFTLET_FUZZ_WRITE_SEED=directory writes seeds there (sections encoded by
// the real capture code, idle and running) and exits: scripts/fuzz makes the
// seed corpus that way, so no binary is committed.

final class NullLine: InterruptLine { func trigger() {} }
final class NullLevel: LevelInterruptLine { func setLevel(_ asserted: Bool) {} }
final class NullRouter: MSIRouter { func route(gsi: UInt32, to message: MSIMessage) {} }
final class NullOutput: SerialOutput { func write(_ bytes: [UInt8]) {} }

final class NullMMIOPlatform: VirtioMMIOPlatform {
    func registerNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32) throws(VirtioMMIOError) {}
    func unregisterNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32) {}
}

final class NullPCIPlatform: PCIPlatform {
    func mapBAR(_ device: any BusDevice, base: UInt64, size: UInt64) -> Bool { true }
    func unmapBAR(_ device: any BusDevice, base: UInt64) {}
    func registerNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32) throws(PCIError) {}
    func unregisterNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32) {}
}

/// A tap with nothing to read that swallows every frame.
final class EmptyTap: TapBackend {
    let label = "fuzz"
    var descriptor: Int32 { -1 }
    func setOffloads(_ flags: UInt32) throws(VirtioNetError) {}
    func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        throw SystemCallError(call: "readv", errno: .wouldBlock)
    }
    func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int { vectors.reduce(0) { $0 + $1.iov_len } }
}

/// A real device's identity, configuration and snapshot methods, without
/// its worker: activation and reset do nothing, so a restore that starts
/// the queues starts no thread.
final class ProxyDevice: VirtioDevice {
    let real: any VirtioDevice
    let counters = VirtioCounters()
    init(_ real: any VirtioDevice) { self.real = real }
    var deviceType: VirtioDeviceType { real.deviceType }
    var queueMaximumSizes: [UInt16] { real.queueMaximumSizes }
    var offeredFeatures: UInt64 { real.offeredFeatures }
    func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer) { real.readConfiguration(offset: offset, into: data) }
    func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {}
    func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {}
    func reset() {}
    func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot { try real.suspendForSnapshot() }
    func resumeAfterSnapshot() { real.resumeAfterSnapshot() }
    func restoreSnapshot(device state: [UInt8]) throws(VirtioDeviceError) { try real.restoreSnapshot(device: state) }
}

func fail(_ message: String) -> Never {
    let line = "fuzz: \(message)\n"
    // SAFETY: the C string lives for the duration of the write.
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

/// A 64-sector scratch image, unlinked once open.
func scratchDisk() -> DiskImage {
    var template = Array("/tmp/swiftlet-fuzz-state-XXXXXX".utf8CString)
    // SAFETY: mkstemp writes the name into the template's own storage.
    let descriptor = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.map { mkstemp($0) } ?? -1 }
    guard descriptor >= 0, ftruncate(descriptor, 64 * 512) == 0 else { fail("cannot create the scratch image") }
    close(descriptor)
    let path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    defer { unlink(path) }
    do {
        return try DiskImage(path: path, readOnly: false, directIO: false)
    } catch {
        fail("cannot open the scratch image: \(error)")
    }
}

let memory = makeRealisticGuestMemory()
let host = HostCPUIdentity.current
/// One of each device kind, in the order the input's K byte picks them.
let devices: [any VirtioDevice]
do {
    devices = [
        try VirtioBlockDevice(disk: scratchDisk(), identifier: "fuzz-disk"),
        VirtioNetDevice(tap: EmptyTap(), mac: MACAddress.derived(from: "fuzz")),
        VirtioRNG(),
        try ConsoleDevice(output: NullOutput()),
        try VirtioVsockDevice(fuzzingWithGuestCID: 3),
        VirtioNetDevice(tap: EmptyTap(), mac: MACAddress.derived(from: "fuzz"), additionalQueues: [EmptyTap()], mtu: 9000),
    ]
} catch {
    fail("cannot build the devices: \(error)")
}

let mmioBase: UInt64 = 0xD000_1000
let pciSlot: UInt8 = 1
let barBase: UInt64 = 0xC000_0000

func mmioTransport(_ device: any VirtioDevice) -> VirtioMMIOTransport {
    VirtioMMIOTransport(device: ProxyDevice(device), base: mmioBase, memory: memory, platform: NullMMIOPlatform(),
                        interrupt: NullLine(), log: { _ in })
}

func pciTransport(_ device: any VirtioDevice) -> VirtioPCITransport? {
    guard let address = PCIAddress(device: pciSlot) else { return nil }
    let vectors = (0...device.queueMaximumSizes.count).map { MSIVector(gsi: 24 + UInt32($0), line: NullLine()) }
    return try? VirtioPCITransport(device: ProxyDevice(device), address: address, barAddress: barBase, memory: memory,
                                   platform: NullPCIPlatform(), msixVectors: vectors, router: NullRouter(), intx: NullLevel(),
                                   log: { _ in })
}

/// A decoded section must be exactly the bytes it was read from, encoded.
func checkCanonical(_ consumed: ArraySlice<UInt8>, _ encode: (inout StateEncoder) -> Void, _ what: String) {
    var encoder = StateEncoder()
    encode(&encoder)
    guard encoder.bytes.elementsEqual(consumed) else { fatalError("a decoded \(what) does not encode back to its bytes") }
}

/// Each `fuzz` function returns whether the input decoded (the seeds must).
@discardableResult
func fuzzSerial(_ body: ArraySlice<UInt8>) -> Bool {
    var decoder = StateDecoder(body)
    guard let state = try? Serial8250State.decode(from: &decoder), (try? decoder.finish()) != nil else { return false }
    checkCanonical(body, state.encode, "8250 state")
    let serial = Serial8250(output: NullOutput(), interrupt: NullLine())
    serial.restore(state)
    guard serial.captureState() == state else { fatalError("a restored 8250 reads back other registers") }
    return true
}

@discardableResult
func fuzzMMIO(_ device: any VirtioDevice, _ body: ArraySlice<UInt8>) -> Bool {
    let transport = mmioTransport(device)
    defer { transport.shutdown() }
    var decoder = StateDecoder(body)
    guard let header = try? VirtioMMIOSnapshot.decodeHeader(from: &decoder),
          let snapshot = try? transport.decodeSnapshotBody(&decoder, base: header.base, deviceType: header.deviceType),
          (try? decoder.finish()) != nil
    else { return false }
    checkCanonical(body, snapshot.encode, "virtio-mmio section")
    guard header.base == mmioBase, header.deviceType == device.deviceType.rawValue else { return true }
    return (try? transport.restore(snapshot)) != nil
}

@discardableResult
func fuzzPCI(_ device: any VirtioDevice, _ body: ArraySlice<UInt8>) -> Bool {
    guard let transport = pciTransport(device) else { fail("cannot build the PCI function") }
    defer { transport.shutdown() }
    var decoder = StateDecoder(body)
    guard let header = try? VirtioPCISnapshot.decodeHeader(from: &decoder),
          let snapshot = try? transport.decodeSnapshotBody(&decoder, slot: header.slot, deviceType: header.deviceType),
          (try? decoder.finish()) != nil
    else { return false }
    checkCanonical(body, snapshot.encode, "virtio-pci section")
    guard header.slot == pciSlot, header.deviceType == device.deviceType.rawValue else { return true }
    return (try? transport.restore(snapshot)) != nil
}

/// The input as a sequence of tagged sections, as far as it parses.
func sections(_ body: ArraySlice<UInt8>) -> [SnapshotSection] {
    var decoder = StateDecoder(body)
    var result: [SnapshotSection] = []
    while !decoder.isAtEnd, result.count < 300, let (tag, section) = try? decoder.nextSection(maximumLength: 1 << 20) {
        result.append(SnapshotSection(tag: tag, body: section.remainingBytes))
    }
    return result
}

@discardableResult
func fuzzMachine(_ body: ArraySlice<UInt8>) -> Bool {
    let file = SnapshotFile(cpu: host, sections: sections(body))
    guard let machine = try? SavedMachine(file, path: "fuzz") else { return false }
    let checked = (try? machine.checkBeforeLoad()) != nil
    // What decoded encodes again and decodes to the same machine.
    guard let again = try? SavedMachine(SnapshotFile(cpu: host, sections: machine.sections()), path: "fuzz") else {
        fatalError("a decoded machine does not decode again once encoded")
    }
    guard again.kvmState == machine.kvmState, again.memoryLayout == machine.memoryLayout, again.diskSizes == machine.diskSizes,
          again.deviceSections == machine.deviceSections
    else { fatalError("a decoded machine comes back other once encoded") }
    return checked
}

@discardableResult
func fuzzTransportState(_ body: ArraySlice<UInt8>) -> Bool {
    var decoder = StateDecoder(body)
    guard let count = try? decoder.decode(UInt8.self), let features = try? decoder.decode(UInt64.self) else { return false }
    var maxima: [UInt16] = []
    for _ in 0..<(count % 9) {
        guard let size = try? decoder.decode(UInt16.self) else { return false }
        maxima.append(size)
    }
    let start = decoder.offset
    guard let state = try? VirtioTransportState.decode(from: &decoder, queueMaximumSizes: maxima, offeredFeatures: features) else { return false }
    checkCanonical(body[start..<decoder.offset], state.encode, "transport state")
    return true
}

/// The multiqueue device's own state: what decodes must encode back to
/// the same bytes, and restore into the device (2 pairs, MTU 9000) unless
/// it names other pairs, another MTU or another MAC.
@discardableResult
func fuzzMultiqueueNet(_ body: ArraySlice<UInt8>) -> Bool {
    var decoder = StateDecoder(body)
    guard let state = try? NetSnapshotState.decode(from: &decoder), (try? decoder.finish()) != nil else { return false }
    checkCanonical(body, state.encode, "virtio-net state")
    return (try? devices[5].restoreSnapshot(device: Array(body))) != nil
}

/// Runs one input; true when it decoded (and, for a device's own state, restored).
@discardableResult
func fuzzOne(_ input: [UInt8]) -> Bool {
    guard let selector = input.first else { return false }
    let body = input.dropFirst()
    switch selector % 11 {
    case 0: return fuzzSerial(body)
    case 1: return body.first.map { fuzzMMIO(devices[Int($0) % devices.count], body.dropFirst()) } ?? false
    case 2: return body.first.map { fuzzPCI(devices[Int($0) % devices.count], body.dropFirst()) } ?? false
    case 3, 4, 5, 6, 7: return (try? devices[Int(selector % 11) - 3].restoreSnapshot(device: Array(body))) != nil
    case 8: return fuzzMachine(body)
    case 9: return fuzzTransportState(body)
    default: return fuzzMultiqueueNet(body)
    }
}

// MARK: Seeds

func writeSeeds(to directory: String) {
    var seeds: [(String, [UInt8])] = []
    func section(_ encode: (inout StateEncoder) -> Void) -> [UInt8] {
        var encoder = StateEncoder()
        encode(&encoder)
        return encoder.bytes
    }
    let serial = Serial8250State(interruptEnable: 0x03, lineControl: 0x1B, modemControl: 0x0B, scratch: 0x5A, divisorLow: 1,
                                 fifoControl: 0xC7, transmitterEmptyPending: true)
    seeds.append(("serial", [0] + section(serial.encode)))
    let names = ["blk", "net", "rng", "console", "vsock", "net-mq"]
    for (kind, device) in devices.enumerated() {
        let name = names[kind]
        do {
            let mmio = mmioTransport(device)
            defer { mmio.shutdown() }
            var snapshot = try mmio.captureSnapshot()
            seeds.append(("mmio-\(name)-idle", [1, UInt8(kind)] + section(snapshot.encode)))
            running(&snapshot.transport, device)
            snapshot.interruptStatus = 1
            seeds.append(("mmio-\(name)-running", [1, UInt8(kind)] + section(snapshot.encode)))
            // The running seed must restore, or mutations would rarely reach the queues.
            let check = mmioTransport(device)
            defer { check.shutdown() }
            try check.restore(snapshot)
        } catch {
            fail("virtio-mmio \(name) seed: \(error)")
        }
        do {
            guard let pci = pciTransport(device) else { fail("cannot build the PCI function") }
            defer { pci.shutdown() }
            var snapshot = try pci.captureSnapshot()
            seeds.append(("pci-\(name)-idle", [2, UInt8(kind)] + section(snapshot.encode)))
            running(&snapshot.transport, device)
            snapshot.queueVectors = snapshot.queueVectors.indices.map { UInt16($0 + 1) }
            snapshot.configurationVector = 0
            snapshot.isr = 1
            seeds.append(("pci-\(name)-running", [2, UInt8(kind)] + section(snapshot.encode)))
            guard let check = pciTransport(device) else { fail("cannot build the PCI function") }
            defer { check.shutdown() }
            try check.restore(snapshot)
        } catch {
            fail("virtio-pci \(name) seed: \(error)")
        }
        do {
            // Own-state selectors: 3...7 for the first five kinds, 10 for the multiqueue net device.
            seeds.append(("device-\(name)", [UInt8(kind < 5 ? 3 + kind : 10)] + (try device.suspendForSnapshot().device)))
            device.resumeAfterSnapshot()
        } catch {
            fail("\(name) device seed: \(error)")
        }
    }
    var enabled = StateEncoder()
    NetSnapshotState(mac: MACAddress.derived(from: "fuzz").octets, queuePairs: 2, activePairs: 2, mtu: 9000).encode(into: &enabled)
    seeds.append(("device-net-mq-enabled", [10] + enabled.bytes))
    seeds.append(("machine", [8] + machineSeed()))
    seeds.append(("transport", [9] + section { encoder in
        encoder.encode(UInt8(2))
        encoder.encode(UInt64(1) << 32 | 1 << 29)
        encoder.encode(UInt16(256))
        encoder.encode(UInt16(64))
        var captured: VirtioMMIOSnapshot?
        captured = try? mmioTransport(devices[1]).captureSnapshot()
        if var transport = captured?.transport {
            running(&transport, devices[1])
            transport.encode(into: &encoder)
        }
    }))
    for (name, bytes) in seeds {
        guard fuzzOne(bytes) else { fail("seed \(name) does not decode and restore") }
        let path = "\(directory)/\(name)"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        // SAFETY: the array's storage is valid for its count during the call.
        guard descriptor >= 0, bytes.withUnsafeBytes({ write(descriptor, $0.baseAddress, $0.count) }) == bytes.count else {
            fail("cannot write \(path)")
        }
        close(descriptor)
    }
}

/// The transport state of a driver that set DRIVER_OK with every queue
/// enabled in RAM and some chains walked.
func running(_ state: inout VirtioTransportState, _ device: any VirtioDevice) {
    state.status = VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK
    state.driverFeatures = VirtioFeature.version1 | (device.offeredFeatures & VirtioFeature.eventIndex)
    state.active = true
    for index in state.queues.indices {
        let base = UInt64(0x10_0000 + index * 0x1_0000)
        state.queues[index].size = min(device.queueMaximumSizes[index], 64)
        state.queues[index].enabled = true
        state.queues[index].descriptorTable = base
        state.queues[index].driverArea = base + 0x4000
        state.queues[index].deviceArea = base + 0x8000
    }
    state.queueStates = state.queues.indices.map { _ in VirtqueueState(nextAvailable: 7, nextUsed: 5, usedAtLastInterruptCheck: 4) }
}

/// The VMM's sections for a configuration with every kind of device.
func machineSeed() -> [UInt8] {
    var configuration = VMConfiguration(kernelPath: "/vmlinux", commandLine: "console=ttyS0", cpuCount: 2, memorySize: 256 << 20,
                                        serial: .file(path: "/tmp/serial.log"))
    configuration.disks = [DiskConfiguration(path: "/rootfs.ext4", id: "rootfs"), DiskConfiguration(path: "/data", id: "data", readOnly: true)]
    configuration.networkInterfaces = [NetworkInterfaceConfiguration(id: "eth0", tap: .name("tap0")),
                                       NetworkInterfaceConfiguration(id: "eth1", tap: .name("tap1"), queues: 2, mtu: 9000)]
    configuration.vsock = VsockConfiguration(guestCID: 3, udsPath: "/tmp/v.sock")
    configuration.entropyDevice = true
    configuration.metadataService = MetadataServiceAttachment(service: MetadataService(), interfaceIDs: ["eth0"])
    let vcpus = (0..<2).map { id in
        VCPUState(id: UInt32(id), mpState: [0, 0, 0, 0], regs: [UInt8](repeating: 1, count: 144), sregs: [UInt8](repeating: 2, count: 312),
                  fpuFormat: .xsave, fpu: [UInt8](repeating: 3, count: 64), xcrs: [UInt8](repeating: 4, count: 16),
                  debugRegs: [UInt8](repeating: 5, count: 16), lapic: [UInt8](repeating: 6, count: 64),
                  msrs: [VCPUState.MSREntry(index: 0x10, value: 1234), VCPUState.MSREntry(index: 0x4b56_4d00, value: 0x1000)],
                  events: [UInt8](repeating: 7, count: 64))
    }
    let vm = VMState(picMaster: [1, 2], picSlave: [3, 4], ioAPIC: [5, 6], pit: [7, 8], clock: [9, 10])
    guard let layout = try? GuestMemory(ranges: MemoryPlan.ramRanges(memorySize: 256 << 20).map { ($0.start, $0.size) }).fileLayout else {
        fail("cannot map the seed's memory")
    }
    let machine = SavedMachine(configuration: configuration, diskSizes: ["rootfs": 1 << 20, "data": 4096],
                               kvmState: MachineKVMState(vcpus: vcpus, vm: vm), memoryLayout: layout,
                               deviceSections: [SnapshotSection(tag: SectionTag("SERI")) { _ in }])
    var encoder = StateEncoder()
    for section in machine.sections() {
        encoder.section(section.tag) { $0.append(raw: section.body) }
    }
    return encoder.bytes
}

if let directory = getenv("SWIFTLET_FUZZ_WRITE_SEED").map({ String(cString: $0) }) {
    writeSeeds(to: directory)
    exit(0)
}

runFuzzer { start, count in
    fuzzOne(fuzzInput(start, count))
    return 0
}
