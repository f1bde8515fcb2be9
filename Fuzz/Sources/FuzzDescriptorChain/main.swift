import FuzzSupport
import GuestMemory
import Virtio

// The guest writes the descriptor table, the rings and the indirect tables:
// whatever it writes, the walker must return validated chains or throw, never
// crash, hang or touch memory outside guest RAM.
//
// Input layout: byte 0 = queue size exponent (size = 1 << (b & 7)),
// byte 1 = features (bit 0 INDIRECT_DESC, bit 1 EVENT_IDX), then the rest is
// copied over the first 8 KiB of guest memory, where the rings live;
// descriptors may cover any of the 256 MiB (see makeRealisticGuestMemory).
let memory = makeRealisticGuestMemory()

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard bytes.count >= 2 else { return 0 }
    let size = UInt16(1) << UInt16(bytes[0] & 7)
    var features: UInt64 = 0
    if bytes[1] & 1 != 0 { features |= VirtioFeature.indirectDescriptors }
    if bytes[1] & 2 != 0 { features |= VirtioFeature.eventIndex }
    try? memory.zero(at: GuestAddress(0), count: 0x4000)
    try? memory.write(bytes: bytes.dropFirst(2).prefix(0x2000), at: GuestAddress(0))
    // Rings as a driver would place them for the largest size (128): table at
    // 0, available ring at 0x800, used ring at 0xA00.
    let configuration = VirtqueueConfiguration(
        size: size, descriptorTable: GuestAddress(0), availableRing: GuestAddress(0x800), usedRing: GuestAddress(0xA00))
    guard var queue = try? Virtqueue(configuration: configuration, maximumSize: 128, features: features, memory: memory) else { return 0 }
    // At most one pass over the ring: each pop either consumes an entry or throws.
    for _ in 0...Int(size) {
        do {
            guard let chain = try queue.popChain() else { break }
            var reader = ChainReader(memory: memory, buffers: chain.readable)
            _ = try reader.readBytes(count: Int(min(reader.remaining, 64)))
            var writer = ChainWriter(memory: memory, buffers: chain.writable)
            try writer.write(bytes: [UInt8](repeating: 0xA5, count: Int(min(writer.remaining, 64))))
            try queue.addUsed(head: chain.head, writtenLength: writer.written)
            _ = try queue.shouldInterrupt()
            _ = try queue.enableNotifications()
        } catch {
            break
        }
    }
    return 0
}
