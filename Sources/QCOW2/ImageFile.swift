import Glibc
import HostSystem

/// An open image file: positioned reads and writes that loop over short
/// transfers, with errors naming the file and offset.
struct ImageFile: Sendable {
    let descriptor: OwnedFileDescriptor
    let path: String

    /// Reads into `buffer` at `offset` until it is full or the file ends;
    /// returns the bytes read (fewer only at end of file).
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) -> Int {
        var done = 0
        let fd = descriptor.rawValue
        while done < buffer.count {
            guard let base = buffer.baseAddress else { return 0 }
            let position = offset + UInt64(done)
            let count: Int
            do {
                count = try systemCall("pread") {
                    pread(fd, base + done, buffer.count - done, off_t(truncatingIfNeeded: position))
                }
            } catch {
                throw .read(path: path, offset: position, cause: error)
            }
            if count == 0 { break }
            done += count
        }
        return done
    }

    /// Reads `count` bytes at `offset`; a short file is `.truncated`.
    func readBytes(count: Int, at offset: UInt64) throws(QCOW2Error) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        // SAFETY: the buffer is `bytes`' storage, alive for the call.
        let result = bytes.withUnsafeMutableBytes { raw in
            Result { () throws(QCOW2Error) -> Int in try read(into: raw, at: offset) }
        }
        guard try result.get() == count else { throw .truncated(path: path, offset: offset, length: UInt64(count)) }
        return bytes
    }

    /// Reads up to `buffer.count` bytes at `offset`, zero-filling past the end of file.
    func readZeroFilled(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        let done = try read(into: buffer, at: offset)
        if done < buffer.count, let base = buffer.baseAddress {
            // SAFETY: done..<count lies inside `buffer`.
            (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done)
        }
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        var done = 0
        let fd = descriptor.rawValue
        while done < buffer.count {
            guard let base = buffer.baseAddress else { return }
            let position = offset + UInt64(done)
            let count: Int
            do {
                count = try systemCall("pwrite") {
                    pwrite(fd, base + done, buffer.count - done, off_t(truncatingIfNeeded: position))
                }
            } catch {
                throw .write(path: path, offset: position, cause: error)
            }
            guard count > 0 else {
                throw .write(path: path, offset: position, cause: SystemCallError(call: "pwrite", errno: Errno(rawValue: EIO)))
            }
            done += count
        }
    }

    func write(bytes: [UInt8], at offset: UInt64) throws(QCOW2Error) {
        // SAFETY: the buffer is `bytes`' storage, alive for the call.
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(QCOW2Error) in try write(raw, at: offset) }
        }
        try result.get()
    }

    func sync() throws(QCOW2Error) {
        do {
            _ = try systemCall("fdatasync") { fdatasync(descriptor.rawValue) }
        } catch {
            throw .flush(path: path, cause: error)
        }
    }

    func size() throws(QCOW2Error) -> UInt64 {
        do {
            let status = try descriptor.status()
            return UInt64(max(status.st_size, 0))
        } catch {
            throw .inspect(path: path, cause: error)
        }
    }
}

/// Big-endian field access on header and table bytes. Out-of-range reads
/// give 0 rather than trapping: callers check lengths first, and a
/// mistake must not become a crash on hostile bytes.
extension Array where Element == UInt8 {
    func bigEndian64(at offset: Int) -> UInt64 {
        guard offset >= 0, offset <= count - 8 else { return 0 }
        var value: UInt64 = 0
        for index in offset..<offset + 8 { value = value << 8 | UInt64(self[index]) }
        return value
    }

    func bigEndian32(at offset: Int) -> UInt32 {
        guard offset >= 0, offset <= count - 4 else { return 0 }
        var value: UInt32 = 0
        for index in offset..<offset + 4 { value = value << 8 | UInt32(self[index]) }
        return value
    }

    mutating func storeBigEndian64(_ value: UInt64, at offset: Int) {
        guard offset >= 0, offset <= count - 8 else { return }
        for index in 0..<8 { self[offset + index] = UInt8(truncatingIfNeeded: value >> (56 - 8 * UInt64(index))) }
    }

    mutating func storeBigEndian32(_ value: UInt32, at offset: Int) {
        guard offset >= 0, offset <= count - 4 else { return }
        for index in 0..<4 { self[offset + index] = UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32(index))) }
    }
}

/// Table contents (L1, L2, refcount table) as big-endian 64-bit entries.
func decodeEntries(_ bytes: [UInt8], count: Int) -> [UInt64] {
    (0..<count).map { bytes.bigEndian64(at: $0 * 8) }
}

func encodeEntries(_ entries: [UInt64]) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: entries.count * 8)
    for (index, entry) in entries.enumerated() { bytes.storeBigEndian64(entry, at: index * 8) }
    return bytes
}

func roundUp(_ value: UInt64, to alignment: UInt64) -> UInt64 {
    let remainder = value % alignment
    guard remainder != 0 else { return value }
    // Saturates: offsets come from image bytes, and a huge one must fail a later bounds check, not trap.
    let (sum, overflow) = value.addingReportingOverflow(alignment - remainder)
    return overflow ? UInt64.max : sum
}
