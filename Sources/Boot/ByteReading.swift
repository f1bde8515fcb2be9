/// Bounds-checked little-endian reads from a file image: every offset comes
/// from the file, so every read may fail and returns nil instead of trapping.
extension Array where Element == UInt8 {
    func readLE<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type = T.self, at offset: UInt64) -> T? {
        let size = UInt64(MemoryLayout<T>.size)
        guard containsRange(offset: offset, length: size) else { return nil }
        let start = Int(offset)
        var value: T = 0
        for index in 0..<Int(size) {
            value |= T(self[start + index]) << (8 * index)
        }
        return value
    }

    /// True if `length` bytes at `offset` lie inside the array (overflow-safe).
    func containsRange(offset: UInt64, length: UInt64) -> Bool {
        offset <= UInt64(count) && length <= UInt64(count) - offset
    }

    /// Stores `value` little-endian at a VMM-chosen constant offset.
    mutating func storeLE<T: FixedWidthInteger & UnsignedInteger>(_ value: T, at offset: Int) {
        for index in 0..<MemoryLayout<T>.size {
            self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index))
        }
    }
}
