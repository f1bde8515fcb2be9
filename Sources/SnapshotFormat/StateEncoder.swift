/// Builds saved state as little-endian bytes: fixed-width integers, Bools,
/// length-prefixed byte arrays and strings, counted arrays, and nested tagged
/// sections (4-byte tag, UInt32 body length, body) that a reader can check
/// and skip. Each device writes its own section; `StateDecoder` reads it back.
///
/// Lengths and counts are UInt32. One that does not fit is clamped: such a
/// body is over 4 GiB, far past `SnapshotFile.maximumSize`, which the writer
/// refuses, so a clamped length is never written to a file.
public struct StateEncoder: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    /// Appends `value` little-endian, in `T`'s width.
    public mutating func encode<T: FixedWidthInteger>(_ value: T) {
        for index in 0..<(T.bitWidth / 8) {
            bytes.append(UInt8(truncatingIfNeeded: value >> (8 * index)))
        }
    }

    /// Appends one byte, 1 or 0.
    public mutating func encode(_ value: Bool) {
        bytes.append(value ? 1 : 0)
    }

    /// Appends a UInt32 length, then the bytes.
    public mutating func encode(bytes value: some Collection<UInt8>) {
        encode(UInt32(clamping: value.count))
        bytes.append(contentsOf: value)
    }

    /// Appends a string as its UTF-8 bytes with a UInt32 length.
    public mutating func encode(_ value: String) {
        encode(bytes: Array(value.utf8))
    }

    /// Appends a UInt32 count, then each element as `encodeElement` writes it.
    public mutating func encode<Element>(
        array: some Collection<Element>, _ encodeElement: (inout StateEncoder, Element) -> Void
    ) {
        encode(UInt32(clamping: array.count))
        for element in array { encodeElement(&self, element) }
    }

    /// Appends raw bytes with no length (fixed-size fields such as a magic).
    public mutating func append(raw value: some Sequence<UInt8>) {
        bytes.append(contentsOf: value)
    }

    /// Appends a section: `tag`, the body's length, then the body `body` writes.
    public mutating func section<Failure: Error>(
        _ tag: SectionTag, _ body: (inout StateEncoder) throws(Failure) -> Void
    ) throws(Failure) {
        encode(tag.rawValue)
        let lengthOffset = bytes.count
        encode(UInt32(0))
        try body(&self)
        let length = UInt32(clamping: bytes.count - lengthOffset - 4)
        for index in 0..<4 {
            bytes[lengthOffset + index] = UInt8(truncatingIfNeeded: length >> (8 * index))
        }
    }
}
