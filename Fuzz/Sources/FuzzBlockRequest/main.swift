import FuzzSupport
import Glibc
import GuestMemory
import Virtio
import VirtioBlock

// The guest writes request headers, data and segment lists, and chooses how
// a chain splits into buffers: whatever it writes, the virtio-blk request
// processor must complete the chain (or return it without a status byte),
// never crash, hang, or touch memory or file bytes outside guest RAM and the
// image.
//
// Input layout: byte 0 = disk and features (bit 0 read-only, bit 1 DISCARD,
// bit 2 WRITE_ZEROES, bit 3 O_DIRECT), byte 1 = buffer count (1 + b % 8),
// then per buffer 5 bytes (address u16 LE, length u16 LE, flags: bit 0
// device-writable, bit 1 address in 4 KiB pages, bit 2 length in 4 KiB
// pages, so a buffer can cover up to 256 MiB of RAM); the rest is copied over
// the first 64 KiB of guest memory, where headers, data and segments live.
// Buffers are ordered readable first, as the queue guarantees, and clamped
// into guest RAM, as the queue checks.
let imageWindow: UInt64 = 0x10000
let memory = makeRealisticGuestMemory()

/// A 64-sector scratch image, unlinked once open.
func scratchDisk(readOnly: Bool, directIO: Bool) -> DiskImage {
    var template = Array("/tmp/swiftlet-fuzz-blk-XXXXXX".utf8CString)
    let descriptor = mkstemp(&template)
    guard descriptor >= 0, ftruncate(descriptor, 64 * 512) == 0 else { fatalError("fuzz: cannot create the scratch image") }
    close(descriptor)
    let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    defer { unlink(path) }
    do {
        return try DiskImage(path: path, readOnly: readOnly, directIO: directIO)
    } catch {
        fatalError("fuzz: cannot open the scratch image: \(error)")
    }
}

let disks = [scratchDisk(readOnly: false, directIO: false), scratchDisk(readOnly: true, directIO: false),
             scratchDisk(readOnly: false, directIO: true), scratchDisk(readOnly: true, directIO: true)]
let identifier = Array("fuzz-disk".utf8) + [UInt8](repeating: 0, count: 11)
let counters = VirtioCounters()

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard bytes.count >= 2 else { return 0 }
    let mode = bytes[0]
    let disk = disks[Int(mode & 1) | (mode & 8 != 0 ? 2 : 0)]
    var features: UInt64 = 0
    if mode & 2 != 0 { features |= BlockFeature.discard }
    if mode & 4 != 0 { features |= BlockFeature.writeZeroes }
    let bufferCount = 1 + Int(bytes[1] % 8)
    let table = bytes.dropFirst(2).prefix(bufferCount * 5)
    guard table.count == bufferCount * 5 else { return 0 }
    var readable: [GuestBuffer] = [], writable: [GuestBuffer] = []
    for index in 0..<bufferCount {
        let entry = Array(table.dropFirst(index * 5).prefix(5))
        let address = (UInt64(entry[0]) | UInt64(entry[1]) << 8) << (entry[4] & 2 != 0 ? 12 : 0)
        let length = (UInt64(entry[2]) | UInt64(entry[3]) << 8) << (entry[4] & 4 != 0 ? 12 : 0)
        // Clamp into the RAM range the buffer starts in, as the queue's walk guarantees.
        guard let range = realisticGuestMemoryRanges.first(where: {
            address >= $0.start.rawValue && address < $0.start.rawValue + $0.size
        }) else { continue }
        let clamped = min(length, range.start.rawValue + range.size - address, UInt64(UInt32.max))
        guard clamped > 0 else { continue }
        let buffer = GuestBuffer(address: GuestAddress(address), length: UInt32(clamped))
        if entry[4] & 1 != 0 { writable.append(buffer) } else { readable.append(buffer) }
    }
    try? memory.zero(at: GuestAddress(0), count: imageWindow)
    try? memory.write(bytes: bytes.dropFirst(2 + bufferCount * 5).prefix(Int(imageWindow)), at: GuestAddress(0))
    let processor = BlockRequestProcessor(disk: disk, memory: memory, features: features, identifier: identifier, counters: counters)
    let outcome = processor.handle(DescriptorChain(head: 0, readable: readable, writable: writable))
    // What the used ring gets must fit what the driver offered.
    let offered = writable.reduce(UInt64(0)) { $0 + UInt64($1.length) }
    guard UInt64(outcome.writtenLength) <= offered else { fatalError("written \(outcome.writtenLength) > offered \(offered)") }
    return 0
}
