import Devices
import FuzzSupport
import Glibc
import GuestMemory
import HostSystem
import Synchronization
import Virtio
import VirtioConsole

// The guest writes both virtio-console queues' rings and descriptors, and
// chooses buffers anywhere in 256 MiB of guest RAM: whatever it writes, the
// console must transmit in bounded pieces (never gather a chain whole), fill
// receive buffers with at most the typed input, and break the queues on a
// bad or oversize chain, never crash, hang or allocate by what the guest claims.
//
// Input layout: byte 0 = queue size exponent (size = 1 << (b & 7)) and
// features (bit 3 INDIRECT_DESC, bit 4 EVENT_IDX), byte 1 = how many bytes
// of typed input are pending (times 16), then the rest is copied over the
// first 16 KiB of guest memory, where both queues' rings live (receive at 0,
// transmit at 0x2000: table, available ring at +0x800, used ring at +0xA00).
let memory = makeRealisticGuestMemory()

/// Checks every write the console makes: bounded pieces, bounded per input.
final class CheckingOutput: SerialOutput {
    let total = Atomic<Int>(0)
    func write(_ bytes: [UInt8]) {
        guard bytes.count <= ConsoleDevice.transmitPieceSize else { fatalError("a write of \(bytes.count) bytes") }
        total.add(bytes.count, ordering: .relaxed)
    }
}

/// Records nothing: the fuzzer only checks that the device survives.
final class IgnoringInterrupt: VirtioInterrupt {
    func signalUsedBuffers(queue index: Int) {}
    func signalConfigurationChange() {}
    func reportDeviceError(_ message: String) {}
}

let output = CheckingOutput()
let interrupt = IgnoringInterrupt()
let device: ConsoleDevice
let notifications: [EventFD]
do {
    device = try ConsoleDevice(output: output)
    notifications = [try EventFD(), try EventFD()]
} catch {
    fatalError("fuzz: cannot create the console: \(error)")
}

func rings(_ base: UInt64, size: UInt16) -> VirtqueueConfiguration {
    VirtqueueConfiguration(size: size, descriptorTable: GuestAddress(base), availableRing: GuestAddress(base + 0x800),
                           usedRing: GuestAddress(base + 0xA00))
}

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard bytes.count >= 2 else { return 0 }
    let size = UInt16(1) << UInt16(bytes[0] & 7)
    var features: UInt64 = 0
    if bytes[0] & 8 != 0 { features |= VirtioFeature.indirectDescriptors }
    if bytes[0] & 16 != 0 { features |= VirtioFeature.eventIndex }
    try? memory.zero(at: GuestAddress(0), count: 0x4000)
    try? memory.write(bytes: bytes.dropFirst(2).prefix(0x4000), at: GuestAddress(0))
    // Typed input accumulates across runs up to the device's bounded capacity.
    _ = device.enqueueInput([UInt8](repeating: 0x61, count: Int(bytes[1]) * 16))
    guard let receive = try? Virtqueue(configuration: rings(0, size: size), maximumSize: ConsoleDevice.queueSize,
                                       features: features, memory: memory),
          let transmit = try? Virtqueue(configuration: rings(0x2000, size: size), maximumSize: ConsoleDevice.queueSize,
                                        features: features, memory: memory) else { return 0 }
    let before = output.total.load(ordering: .relaxed)
    _ = device.serveOnce(VirtioActivation(memory: memory, features: features, queues: [
        VirtioQueueActivation(index: 0, queue: receive, notification: notifications[0]),
        VirtioQueueActivation(index: 1, queue: transmit, notification: notifications[1]),
    ], interrupt: interrupt))
    // At most one pass over the ring, each chain within the limit.
    let written = output.total.load(ordering: .relaxed) - before
    guard UInt64(written) <= UInt64(size) * ConsoleDevice.chainLengthLimit else { fatalError("transmitted \(written) bytes") }
    return 0
}
