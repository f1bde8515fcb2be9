import GuestMemory

/// Reads a chain's device-readable buffers as one byte stream.
public struct ChainReader: Sendable {
    let memory: GuestMemory
    let buffers: [GuestBuffer]
    var bufferIndex = 0
    var offsetInBuffer: UInt32 = 0

    public init(memory: GuestMemory, buffers: [GuestBuffer]) {
        self.memory = memory
        self.buffers = buffers
    }

    /// Bytes not yet read.
    public var remaining: UInt64 {
        guard bufferIndex < buffers.count else { return 0 }
        return buffers[bufferIndex...].reduce(0) { $0 + UInt64($1.length) } - UInt64(offsetInBuffer)
    }

    /// Copies up to `destination.count` bytes; returns how many were copied.
    public mutating func read(into destination: UnsafeMutableRawBufferPointer) throws(GuestMemoryError) -> Int {
        var copied = 0
        while copied < destination.count, bufferIndex < buffers.count {
            let buffer = buffers[bufferIndex]
            let available = Int(buffer.length - offsetInBuffer)
            let count = min(available, destination.count - copied)
            if count > 0 {
                // SAFETY: count ≤ destination.count - copied, so the slice stays inside destination.
                try memory.read(into: UnsafeMutableRawBufferPointer(rebasing: destination[copied..<(copied + count)]),
                                at: buffer.address + UInt64(offsetInBuffer))
            }
            copied += count
            offsetInBuffer += UInt32(count)
            if offsetInBuffer == buffer.length {
                bufferIndex += 1
                offsetInBuffer = 0
            }
        }
        return copied
    }

    /// Reads exactly `count` bytes, or nil (nothing consumed is undone) if fewer remain.
    public mutating func readBytes(count: Int) throws(GuestMemoryError) -> [UInt8]? {
        guard UInt64(count) <= remaining else { return nil }
        var bytes = [UInt8](repeating: 0, count: count)
        // SAFETY: the buffer pointer is used only within this call.
        _ = try bytes.withUnsafeMutableBytes { raw in
            Result { () throws(GuestMemoryError) in try read(into: raw) }
        }.get()
        return bytes
    }

    /// Reads a plain little-endian value, or nil if fewer bytes remain.
    public mutating func read<T: GuestMemoryValue>(_ type: T.Type = T.self) throws(GuestMemoryError) -> T? {
        let size = MemoryLayout<T>.size
        guard UInt64(size) <= remaining else { return nil }
        // SAFETY: the stack buffer holds exactly size-of-T bytes, all copied
        // from the chain before the load; T is plain data.
        let value = withUnsafeTemporaryAllocation(byteCount: size, alignment: MemoryLayout<T>.alignment) { raw in
            Result { () throws(GuestMemoryError) -> T in
                _ = try read(into: raw)
                return raw.loadUnaligned(as: T.self)
            }
        }
        return try value.get()
    }

    /// The buffers not yet read (the first one trimmed), for zero-copy I/O.
    public var remainingBuffers: [GuestBuffer] {
        guard bufferIndex < buffers.count else { return [] }
        var result = Array(buffers[bufferIndex...])
        result[0] = GuestBuffer(address: result[0].address + UInt64(offsetInBuffer), length: result[0].length - offsetInBuffer)
        return result.filter { $0.length > 0 }
    }
}

/// Writes a chain's device-writable buffers as one byte stream; `written` is
/// what goes into the used ring.
public struct ChainWriter: Sendable {
    let memory: GuestMemory
    let buffers: [GuestBuffer]
    var bufferIndex = 0
    var offsetInBuffer: UInt32 = 0
    /// Bytes written so far.
    public private(set) var written: UInt32 = 0

    public init(memory: GuestMemory, buffers: [GuestBuffer]) {
        self.memory = memory
        self.buffers = buffers
    }

    /// Room left.
    public var remaining: UInt64 {
        guard bufferIndex < buffers.count else { return 0 }
        return buffers[bufferIndex...].reduce(0) { $0 + UInt64($1.length) } - UInt64(offsetInBuffer)
    }

    /// Copies as much of `source` as fits; returns how many bytes were written.
    @discardableResult
    public mutating func write(_ source: UnsafeRawBufferPointer) throws(GuestMemoryError) -> Int {
        var copied = 0
        while copied < source.count, bufferIndex < buffers.count {
            let buffer = buffers[bufferIndex]
            let count = min(Int(buffer.length - offsetInBuffer), source.count - copied)
            if count > 0 {
                try memory.write(bytes: UnsafeRawBufferPointer(rebasing: source[copied..<(copied + count)]),
                                 at: buffer.address + UInt64(offsetInBuffer))
            }
            copied += count
            offsetInBuffer += UInt32(count)
            if offsetInBuffer == buffer.length {
                bufferIndex += 1
                offsetInBuffer = 0
            }
        }
        written &+= UInt32(truncatingIfNeeded: copied)
        return copied
    }

    /// Copies as much of `bytes` as fits.
    @discardableResult
    public mutating func write(bytes: [UInt8]) throws(GuestMemoryError) -> Int {
        // SAFETY: the buffer pointer is used only within this call.
        try bytes.withUnsafeBytes { raw in
            Result { () throws(GuestMemoryError) -> Int in try write(raw) }
        }.get()
    }

    /// Records `count` bytes written directly (e.g. by pread into `remainingBuffers`).
    public mutating func advance(by count: UInt64) {
        var left = count
        while left > 0, bufferIndex < buffers.count {
            let step = min(left, UInt64(buffers[bufferIndex].length - offsetInBuffer))
            offsetInBuffer += UInt32(step)
            left -= step
            written &+= UInt32(truncatingIfNeeded: step)
            if offsetInBuffer == buffers[bufferIndex].length {
                bufferIndex += 1
                offsetInBuffer = 0
            }
        }
    }

    /// The buffers not yet written (the first one trimmed), for zero-copy I/O.
    public var remainingBuffers: [GuestBuffer] {
        guard bufferIndex < buffers.count else { return [] }
        var result = Array(buffers[bufferIndex...])
        result[0] = GuestBuffer(address: result[0].address + UInt64(offsetInBuffer), length: result[0].length - offsetInBuffer)
        return result.filter { $0.length > 0 }
    }
}
