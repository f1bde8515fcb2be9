import Devices
import HostSystem
import PCI
import Synchronization

extension PCIFunction {
    func readConfiguration(_ offset: Int, size: Int) -> UInt32 {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { readConfiguration(offset: offset, into: $0) }
        return bytes.enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
    }

    func writeConfiguration(_ offset: Int, size: Int, _ value: UInt32) {
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: value >> (8 * UInt32($0))) }
        bytes.withUnsafeBytes { writeConfiguration(offset: offset, from: $0) }
    }

    /// Offsets of the capabilities with `id`, walking the list from 0x34.
    func capabilities(id: UInt8) -> [Int] {
        var result: [Int] = []
        var offset = Int(readConfiguration(PCIRegister.capabilitiesPointer, size: 1))
        var steps = 0
        while offset != 0 && steps < 48 {
            if readConfiguration(offset, size: 1) == UInt32(id) { result.append(offset) }
            offset = Int(readConfiguration(offset + 1, size: 1))
            steps += 1
        }
        return result
    }
}

extension BusDevice {
    func read(_ offset: UInt64, size: Int) -> UInt64 {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { read(offset: offset, into: $0) }
        return bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    func write(_ offset: UInt64, size: Int, _ value: UInt64) {
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
        bytes.withUnsafeBytes { write(offset: offset, from: $0) }
    }
}

/// A PCI function that is only a configuration space.
final class PlainFunction: PCIFunction {
    let space: Mutex<PCIConfigurationSpace>

    init(_ space: PCIConfigurationSpace) {
        self.space = Mutex(space)
    }

    func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        space.withLock { $0.read(offset: offset, into: data) }
    }

    func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {
        space.withLock { $0.write(offset: offset, from: data) }
    }
}

final class CountingLine: InterruptLine {
    let count = Atomic<Int>(0)
    func trigger() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

final class RecordingRouter: MSIRouter {
    let routes = Mutex<[(gsi: UInt32, message: MSIMessage)]>([])
    func route(gsi: UInt32, to message: MSIMessage) { routes.withLock { $0.append((gsi, message)) } }
    var recorded: [(gsi: UInt32, message: MSIMessage)] { routes.withLock { $0 } }
}

final class RecordingLevel: LevelInterruptLine {
    let level = Mutex(false)
    let changes = Atomic<Int>(0)
    func setLevel(_ asserted: Bool) {
        level.withLock { level in
            if level != asserted { changes.add(1, ordering: .relaxed) }
            level = asserted
        }
    }
    var isAsserted: Bool { level.withLock { $0 } }
}

/// A PCIPlatform over a plain bus, recording the notifiers KVM would get.
final class FakePlatform: PCIPlatform {
    let bus = Bus()
    let notifiers = Mutex<[UInt64: EventFD]>([:])

    func mapBAR(_ device: any BusDevice, base: UInt64, size: UInt64) -> Bool {
        (try? bus.insert(device, base: base, length: size)) != nil
    }

    func unmapBAR(_ device: any BusDevice, base: UInt64) {
        bus.remove(device, base: base)
    }

    func registerNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32) throws(PCIError) {
        notifiers.withLock { $0[address] = eventFD }
    }

    func unregisterNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32) {
        notifiers.withLock { _ = $0.removeValue(forKey: address) }
    }

    var notifierAddresses: [UInt64] { notifiers.withLock { $0.keys.sorted() } }

    /// What a guest write of 2 bytes at `address` does under KVM: signal the
    /// ioeventfd there, or reach the bus.
    func guestNotify(_ address: UInt64, queue: UInt16) {
        if let eventFD = notifiers.withLock({ $0[address] }) {
            try? eventFD.signal()
        } else {
            withUnsafeBytes(of: queue.littleEndian) { _ = bus.write(address, from: $0) }
        }
    }
}

/// A deterministic generator for the "any write" tests.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
