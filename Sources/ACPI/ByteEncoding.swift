/// Little-endian appends: every multi-byte field in ACPI tables and AML is
/// little-endian, whatever the host.
extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        var remaining = value.littleEndian
        Swift.withUnsafeBytes(of: &remaining) { append(contentsOf: $0) }
    }

    /// Overwrites `MemoryLayout<T>.size` bytes at `offset` (used to patch a
    /// field once a later value, such as a length, is known).
    mutating func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        var remaining = value.littleEndian
        Swift.withUnsafeBytes(of: &remaining) { raw in
            for (index, byte) in raw.enumerated() {
                self[offset + index] = byte
            }
        }
    }
}

extension ACPIChecksum {
    /// The byte that makes `bytes` sum to zero modulo 256 once it is added.
    static func complement<C: Collection>(of bytes: C) -> UInt8 where C.Element == UInt8 {
        0 &- sum(bytes)
    }

    /// Sum of `bytes` modulo 256: zero for every valid ACPI table.
    static func sum<C: Collection>(_ bytes: C) -> UInt8 where C.Element == UInt8 {
        bytes.reduce(0, &+)
    }
}
