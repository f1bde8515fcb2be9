import FuzzSupport
import Glibc
import HostSystem
import QCOW2

// A qcow2 image is a file a user (or, probed, a guest) may have written:
// whatever its header, extensions and tables say, opening it must succeed
// or fail with one QCOW2Error, and reads and writes through it must never
// crash, hang, or write outside the image file.
//
// The input is the image file. It is written to one scratch file (unlinked
// once open, truncated for each input), opened read-only and read at a few
// offsets (start, middle, end of the virtual disk), then opened writable and
// written at two offsets and flushed, so the allocation and refcount paths
// meet hostile tables too. Backing files it names are opened read-only
// (the fuzzer's sandbox keeps the host read-only).
let scratch: Int32 = {
    var template = Array("/tmp/swiftlet-fuzz-qcow2-XXXXXX".utf8CString)
    let descriptor = mkstemp(&template)
    guard descriptor >= 0 else { fatalError("fuzz: cannot create the scratch image") }
    // SAFETY: mkstemp filled in the NUL-terminated template.
    template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
    return descriptor
}()
let path = "/tmp/fuzz.qcow2"

/// A descriptor of its own for each open (the image closes it).
func reopen() -> OwnedFileDescriptor? {
    let copy = dup(scratch)
    return copy >= 0 ? OwnedFileDescriptor(adopting: copy) : nil
}

func exercise(_ image: QCOW2Image) {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let size = image.virtualSize
    for offset in [0, size / 2, size > 4096 ? size - 4096 : 0] {
        let count = Int(min(4096, size - min(offset, size)))
        // SAFETY: count ≤ buffer.count.
        _ = try? buffer.withUnsafeMutableBytes { raw in
            try image.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]))
        }
    }
}

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard ftruncate(scratch, 0) == 0 else { return 0 }
    // SAFETY: the buffer is `bytes`' storage, alive for the call.
    let written = bytes.withUnsafeBytes { pwrite(scratch, $0.baseAddress, $0.count, 0) }
    guard written == bytes.count else { return 0 }
    if let descriptor = reopen(), let image = try? QCOW2Image(file: descriptor, path: path, readOnly: true) {
        exercise(image)
    }
    if let descriptor = reopen(), let image = try? QCOW2Image(file: descriptor, path: path, readOnly: false) {
        let data = [UInt8](repeating: 0x5a, count: 1000)
        let size = image.virtualSize
        for offset in [UInt64(300), size / 3] where offset + 1000 <= size {
            // SAFETY: the buffer is `data`'s storage, alive for the call.
            _ = try? data.withUnsafeBytes { try image.write(at: offset, from: $0) }
        }
        _ = try? image.discard(at: 0, length: min(size, 1 << 20))
        try? image.flush()
        exercise(image)
    }
    return 0
}
