import FuzzSupport
import Glibc
import GuestMemory
import HostSystem
import Synchronization
import Virtio
@_spi(Fuzzing) import VirtioNet

// virtio-net's frame handling against a hostile driver and odd host frames:
// the guest writes both rings, the descriptors, the TX headers and buffers;
// the "tap" hands over frames of any length. Whatever arrives, the device
// must drop and count, or report a broken queue; never crash, hang, or touch
// memory outside guest RAM.
//
// Input layout: byte 0 = negotiated features (bit 0 MRG_RXBUF, 1 CSUM,
// 2 GUEST_CSUM, 3 GUEST_TSO4, 4 HOST_TSO4, 5 HOST_TSO6, 6 EVENT_IDX,
// 7 INDIRECT_DESC), byte 1 = queue size exponent (1 << (b & 6)) and the
// wake-up sequence, bytes 2-3 = length L of the guest-memory image, then L
// bytes copied over guest memory from address 0 (RX rings at 0, TX rings at
// 0x1000), then host frames, each a 2-byte length and its bytes.

/// A tap in memory: `receive` copies the next queued frame into the
/// device's vectors (returning its full length, as a tap does), `send`
/// reads every byte it is given.
final class MemoryTap: TapBackend {
    let frames = Mutex<[[UInt8]]>([])
    let label = "fuzz"
    var descriptor: Int32 { -1 }

    func setOffloads(_ flags: UInt32) throws(VirtioNetError) {}

    func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        guard let frame = frames.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else {
            throw SystemCallError(call: "readv", errno: .wouldBlock)
        }
        var offset = 0
        for vector in vectors where offset < frame.count {
            guard let base = vector.iov_base else { continue }
            let count = min(vector.iov_len, frame.count - offset)
            // SAFETY: the device vouches for iov_len bytes at iov_base (guest RAM or its bounce buffer).
            frame.withUnsafeBytes { source in
                guard let from = source.baseAddress else { return }
                base.copyMemory(from: from + offset, byteCount: count)
            }
            offset += count
        }
        return frame.count
    }

    func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        var total = 0, checksum: UInt8 = 0
        for vector in vectors {
            // SAFETY: the device vouches for iov_len bytes at iov_base; reading each lets ASan check them.
            let bytes = UnsafeRawBufferPointer(start: vector.iov_base, count: vector.iov_len)
            for byte in bytes { checksum &+= byte }
            total += vector.iov_len
        }
        return total + Int(checksum & 0)
    }
}

final class NullInterrupt: VirtioInterrupt {
    func signalUsedBuffers(queue index: Int) {}
    func signalConfigurationChange() {}
    func reportDeviceError(_ message: String) {}
}

/// The first 64 KiB of RAM take the input's memory image; descriptors may point anywhere in it.
let imageWindow: UInt64 = 0x10000
let memory = makeRealisticGuestMemory()
let notifications: (EventFD, EventFD) = {
    do {
        return (try EventFD(), try EventFD())
    } catch {
        fatalError("fuzz: cannot create eventfds: \(error)")
    }
}()

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard bytes.count >= 4 else { return 0 }
    let flags = bytes[0]
    let featureBits: [UInt64] = [
        VirtioNetFeature.mergeableReceiveBuffers, VirtioNetFeature.checksum, VirtioNetFeature.guestChecksum,
        VirtioNetFeature.guestTSO4, VirtioNetFeature.hostTSO4, VirtioNetFeature.hostTSO6,
        VirtioFeature.eventIndex, VirtioFeature.indirectDescriptors,
    ]
    var features = VirtioFeature.version1 | VirtioNetFeature.mac | VirtioNetFeature.status
    for (bit, feature) in featureBits.enumerated() where flags & (1 << bit) != 0 { features |= feature }
    let size = UInt16(1) << UInt16(bytes[1] & 6)
    let imageLength = Int(bytes[2]) | Int(bytes[3]) << 8
    let image = bytes.dropFirst(4).prefix(imageLength)
    try? memory.zero(at: GuestAddress(0), count: imageWindow)
    try? memory.write(bytes: image, at: GuestAddress(0))

    let tap = MemoryTap()
    var rest = bytes.dropFirst(4 + image.count)
    var frames: [[UInt8]] = []
    while rest.count >= 2, frames.count < 64 {
        let length = Int(rest[rest.startIndex]) | Int(rest[rest.startIndex + 1]) << 8
        rest = rest.dropFirst(2)
        frames.append(Array(rest.prefix(length)))
        rest = rest.dropFirst(length)
    }
    // One very large frame now and then, past the 64 KiB limit.
    if flags & 0x30 == 0x30, let first = frames.first, first.count > 0 {
        frames.append([UInt8](repeating: first[0], count: 12 + 65_554 + 1))
    }
    tap.frames.withLock { $0 = frames }

    func rings(_ base: UInt64) -> VirtqueueConfiguration {
        VirtqueueConfiguration(size: size, descriptorTable: GuestAddress(base), availableRing: GuestAddress(base + 0x400), usedRing: GuestAddress(base + 0x600))
    }
    guard let receive = try? Virtqueue(configuration: rings(0), maximumSize: 256, features: features, memory: memory),
          let transmit = try? Virtqueue(configuration: rings(0x1000), maximumSize: 256, features: features, memory: memory) else { return 0 }
    let device = VirtioNetDevice(tap: tap, mac: MACAddress.derived(from: "fuzz"))
    let activation = VirtioActivation(memory: memory, features: features, queues: [
        VirtioQueueActivation(index: 0, queue: receive, notification: notifications.0),
        VirtioQueueActivation(index: 1, queue: transmit, notification: notifications.1),
    ], interrupt: NullInterrupt())
    // Wake-ups: TX, then the tap, then RX notifications with the tap, as the
    // worker would see them; the sequence's order comes from byte 1.
    let order: [[Int]] = bytes[1] & 0x80 != 0 ? [[2], [1], [0, 2], [1, 2], [0]] : [[1], [2], [0, 2], [0, 1, 2]]
    device.serveSynchronously(activation, events: order)
    return 0
}
