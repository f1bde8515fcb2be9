import Devices
import FuzzSupport
import GuestMemory
import HostSystem
import Virtio
import VirtioMMIO

// The guest drives a virtio-mmio register page: reads and writes of any
// size at any offset (registers, device configuration, past the page's
// registers), with the device raising interrupts and reporting errors in
// between, and queue rings wherever the guest points them in 256 MiB of RAM.
// Nothing may crash, the read-only identity must survive, and after a
// reset the device is stopped with nothing pending.

final class NullLine: InterruptLine { func trigger() {} }

/// Records notifier registrations like KVM would (at most one per queue).
final class RecordingPlatform: VirtioMMIOPlatform {
    func registerNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32) throws(VirtioMMIOError) {}
    func unregisterNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32) {}
}

/// Two queues, no threads: activation only records that it happened.
final class QuietDevice: VirtioDevice {
    let deviceType = VirtioDeviceType.network
    let queueMaximumSizes: [UInt16] = [8, 4]
    let offeredFeatures: UInt64 = VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors | 1 << 5
    let counters = VirtioCounters()
    func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = UInt8(truncatingIfNeeded: offset &+ UInt64(index)) }
    }
    func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {}
    func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {}
    func reset() {}
}

let memory = makeRealisticGuestMemory()

func readValue(_ transport: VirtioMMIOTransport, _ offset: UInt64, _ size: Int) -> UInt64 {
    var bytes = [UInt8](repeating: 0, count: size)
    bytes.withUnsafeMutableBytes { transport.read(offset: offset, into: $0) }
    return bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
}

runFuzzer { start, count in
    let input = fuzzInput(start, count)
    let transport = VirtioMMIOTransport(device: QuietDevice(), base: 0xD000_1000, memory: memory,
                                        platform: RecordingPlatform(), interrupt: NullLine(), log: { _ in })
    var index = 0
    func next() -> UInt8 {
        defer { index += 1 }
        return index < input.count ? input[index] : 0
    }
    func next32() -> UInt32 { (0..<4).reduce(0) { value, shift in value | UInt32(next()) << (8 * shift) } }

    while index < input.count {
        let operation = next()
        let size = [4, 4, 1, 2, 8, 3, 0, 4][Int(operation >> 5)]
        // Mostly the registers' aligned words, sometimes anywhere in the page.
        let offset = operation & 0x10 == 0 ? UInt64(next() & 0x3F) * 4 : UInt64(next32() % 0x1000)
        let value = UInt64(next32())
        switch operation & 0x7 {
        case 0, 1, 2:
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(min($0, 3)))) }
            bytes.withUnsafeBytes { transport.write(offset: offset, from: $0) }
        case 3, 4:
            _ = readValue(transport, offset, size)
        case 5: // a queue address in RAM, so that DRIVER_OK can succeed
            let bytes = withUnsafeBytes(of: (value & 0xF_FFF0).littleEndian) { Array($0.prefix(4)) }
            bytes.withUnsafeBytes { transport.write(offset: 0x80 + UInt64(next() % 3) * 0x10, from: $0) }
        default: // the device meanwhile
            transport.signalUsedBuffers(queue: Int(value % 3))
            if operation & 0x8 != 0 { transport.signalConfigurationChange() }
            if value & 0x100 != 0 { transport.reportDeviceError("fuzz") }
        }
    }

    // Identity survives whatever was written.
    precondition(readValue(transport, 0x000, 4) == 0x7472_6976, "magic changed")
    precondition(readValue(transport, 0x004, 4) == 2, "version changed")
    precondition(readValue(transport, 0x008, 4) == 1, "device ID changed")
    // A reset stops the device and clears every pending cause.
    withUnsafeBytes(of: UInt32(0)) { transport.write(offset: 0x070, from: $0) }
    precondition(!transport.isActive && transport.deviceStatus == 0, "reset left the device running")
    precondition(transport.pendingInterrupts == 0, "reset left interrupts pending")
    transport.shutdown()
    return 0
}
