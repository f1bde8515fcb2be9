import FuzzSupport
import GuestMemory
import HostSystem
import Virtio
@_spi(Fuzzing) import VirtioVsock

// virtio-vsock against a hostile driver: the guest writes the RX and TX
// rings, the descriptors, the packet headers (CIDs, ports, len, type, op,
// flags, credit) and payloads. Whatever arrives, the device must answer with
// RST, drop and count, or report a broken queue; never crash, hang, or touch
// memory outside guest RAM. The host's CONNECT-line parser gets the same bytes.
//
// Input layout: byte 0 = features (bit 0 EVENT_IDX, bit 1 INDIRECT_DESC,
// bit 7 the wake-up order), byte 1 = queue size exponent (1 << (b & 6)),
// bytes 2-3 = length L of the guest-memory image, then L bytes copied over
// guest memory from address 0 (RX rings at 0, TX rings at 0x1000, event
// ring at 0x2000); the rest goes to the CONNECT-line parser.

final class NullInterrupt: VirtioInterrupt {
    func signalUsedBuffers(queue index: Int) {}
    func signalConfigurationChange() {}
    func reportDeviceError(_ message: String) {}
}

/// The first 64 KiB of RAM take the input's memory image; descriptors may point anywhere in it.
let imageWindow: UInt64 = 0x10000
let memory = makeRealisticGuestMemory()
let notifications: (EventFD, EventFD, EventFD) = {
    do {
        return (try EventFD(), try EventFD(), try EventFD())
    } catch {
        fatalError("fuzz: cannot create eventfds: \(error)")
    }
}()

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard bytes.count >= 4 else { return 0 }
    let flags = bytes[0]
    var features = VirtioFeature.version1
    if flags & 1 != 0 { features |= VirtioFeature.eventIndex }
    if flags & 2 != 0 { features |= VirtioFeature.indirectDescriptors }
    let size = UInt16(1) << UInt16(bytes[1] & 6)
    let imageLength = Int(bytes[2]) | Int(bytes[3]) << 8
    let image = bytes.dropFirst(4).prefix(imageLength)
    try? memory.zero(at: GuestAddress(0), count: imageWindow)
    try? memory.write(bytes: image, at: GuestAddress(0))
    _ = HostConnectLine.parse(bytes.dropFirst(4 + image.count))

    func rings(_ base: UInt64) -> VirtqueueConfiguration {
        VirtqueueConfiguration(size: size, descriptorTable: GuestAddress(base), availableRing: GuestAddress(base + 0x400), usedRing: GuestAddress(base + 0x600))
    }
    guard let receive = try? Virtqueue(configuration: rings(0), maximumSize: 256, features: features, memory: memory),
          let transmit = try? Virtqueue(configuration: rings(0x1000), maximumSize: 256, features: features, memory: memory),
          let events = try? Virtqueue(configuration: rings(0x2000), maximumSize: 256, features: features, memory: memory) else { return 0 }
    guard let device = try? VirtioVsockDevice(fuzzingWithGuestCID: 3) else { return 0 }
    let activation = VirtioActivation(memory: memory, features: features, queues: [
        VirtioQueueActivation(index: 0, queue: receive, notification: notifications.0),
        VirtioQueueActivation(index: 1, queue: transmit, notification: notifications.1),
        VirtioQueueActivation(index: 2, queue: events, notification: notifications.2),
    ], interrupt: NullInterrupt())
    // Wake-ups as the worker would see them: TX and RX notifications.
    let order: [[UInt64]] = flags & 0x80 != 0 ? [[1], [2], [1, 2], [2]] : [[2], [1], [2, 1]]
    device.serveSynchronously(activation, events: order)
    return 0
}
