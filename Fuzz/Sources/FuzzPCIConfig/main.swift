import Devices
import FuzzSupport
import GuestMemory
import HostSystem
import PCI
import Virtio
import VirtioPCI

// The guest drives PCI configuration space: address-register writes to
// 0xCF8, data accesses at 0xCFC-0xCFF, ECAM accesses anywhere in the 256 MiB
// window, and accesses to the virtio function's BAR 0 wherever the guest
// moved it (common configuration, MSI-X table and PBA included). Any
// sequence of any sizes at any offsets must not crash, and the read-only
// identity of the functions must survive.

final class NullLine: InterruptLine { func trigger() {} }
final class NullLevel: LevelInterruptLine { func setLevel(_ asserted: Bool) {} }
final class NullRouter: MSIRouter { func route(gsi: UInt32, to message: MSIMessage) {} }

final class BusPlatform: PCIPlatform {
    let bus = Bus()
    func mapBAR(_ device: any BusDevice, base: UInt64, size: UInt64) -> Bool {
        (try? bus.insert(device, base: base, length: size)) != nil
    }
    func unmapBAR(_ device: any BusDevice, base: UInt64) { bus.remove(device, base: base) }
    func registerNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32) throws(PCIError) {}
    func unregisterNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32) {}
}

/// Two queues, no threads: activation only records that it happened.
final class QuietDevice: VirtioDevice {
    let deviceType = VirtioDeviceType.block
    let queueMaximumSizes: [UInt16] = [8, 4]
    let offeredFeatures: UInt64 = VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors
    let counters = VirtioCounters()
    func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = UInt8(truncatingIfNeeded: offset &+ UInt64(index)) }
    }
    func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {}
    func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {}
    func reset() {}
}

let memory = makeRealisticGuestMemory()

func readValue(_ size: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void) -> UInt64 {
    var bytes = [UInt8](repeating: 0, count: size)
    bytes.withUnsafeMutableBytes(body)
    return bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
}

runFuzzer { start, count in
    let input = fuzzInput(start, count)
    let rootBus = PCIRootBus()
    let platform = BusPlatform()
    let barBase: UInt64 = 0xC000_0000
    guard let device1 = PCIAddress(device: 1), let device0 = PCIAddress(device: 0),
          (try? rootBus.attach(PCIHostBridge(), at: device0)) != nil,
          let transport = try? VirtioPCITransport(
              device: QuietDevice(), address: device1, barAddress: barBase, memory: memory, platform: platform,
              msixVectors: (0..<3).map { MSIVector(gsi: 24 + UInt32($0), line: NullLine()) }, router: NullRouter(),
              intx: NullLevel(), log: { _ in }),
          (try? rootBus.attach(transport, at: device1)) != nil
    else { return 0 }
    let ports = PCIConfigurationPorts(bus: rootBus)
    let ecam = PCIECAM(bus: rootBus)

    var index = 0
    func next() -> UInt8 {
        defer { index += 1 }
        return index < input.count ? input[index] : 0
    }
    func next32() -> UInt32 { (0..<4).reduce(0) { value, shift in value | UInt32(next()) << (8 * shift) } }

    while index < input.count {
        let operation = next()
        let size = [1, 2, 4, 8, 3, 0][Int(operation >> 5) % 6]
        let value = UInt64(next32()) | UInt64(next32()) << 32
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(min($0, 7)))) }
        switch operation & 0x7 {
        case 0: // address register: mostly enabled, bus 0, devices 0-3
            let register = UInt32(next())
            let address = (operation & 0x10 == 0 ? 0x8000_0000 : 0) | UInt32(next() & 0x3) << 11 | register
            withUnsafeBytes(of: address.littleEndian) { ports.write(offset: 0, from: $0) }
        case 1: // data window, any port offset and size
            let offset = UInt64(next() & 0x7)
            if operation & 0x10 == 0 {
                bytes.withUnsafeBytes { ports.write(offset: offset, from: $0) }
            } else {
                _ = readValue(size) { ports.read(offset: offset, into: $0) }
            }
        case 2, 3: // ECAM: device 0-3 of bus 0-1, any register of the 4 KiB
            let offset = UInt64(next() & 1) << 20 | UInt64(next() & 0x3) << 15 | UInt64(next32() & 0xFFF)
            if operation & 0x1 == 0 {
                bytes.withUnsafeBytes { ecam.write(offset: offset, from: $0) }
            } else {
                _ = readValue(size) { ecam.read(offset: offset, into: $0) }
            }
        case 4: // ECAM anywhere in the window
            let offset = UInt64(next32()) & 0x0FFF_FFFF
            bytes.withUnsafeBytes { ecam.write(offset: offset, from: $0) }
        case 5, 6: // BAR 0 where it decodes now, or where it was first placed
            let base = transport.mappedBARAddress ?? barBase
            let offset = UInt64(next32() % 0x9000)
            if operation & 0x10 == 0 {
                bytes.withUnsafeBytes { _ = platform.bus.write(base + offset, from: $0) }
            } else {
                _ = readValue(size) { _ = platform.bus.read(base + offset, into: $0) }
            }
        default: // the device raises interrupts meanwhile
            transport.signalUsedBuffers(queue: Int(next() % 4))
            if operation & 0x10 != 0 { transport.signalConfigurationChange() }
            if operation & 0x20 != 0 { transport.reportDeviceError("fuzz") }
        }
    }

    // Identity survives whatever was written.
    precondition(readValue(4) { ecam.read(offset: 1 << 15, into: $0) } == 0x1042_1AF4, "virtio function identity changed")
    precondition(readValue(4) { ecam.read(offset: 0, into: $0) } == 0x0008_1B36, "host bridge identity changed")
    // Release the BAR mapping (the bus holds the transport) and the device's state.
    transport.writeConfiguration(offset: PCIRegister.command, from: UnsafeRawBufferPointer(start: nil, count: 0))
    withUnsafeBytes(of: UInt16(0)) { transport.writeConfiguration(offset: PCIRegister.command, from: $0) }
    transport.shutdown()
    precondition(transport.mappedBARAddress == nil, "BAR still mapped with decoding off")
    return 0
}
