/// Little-endian field encoding shared by every frame: fixed-width
/// integers, and byte strings as a UInt32 length then the bytes. Written to
/// build as Embedded Swift too (the guest agent), so no Foundation, no
/// existentials, typed throws only.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(reserving capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func u16(_ value: UInt16) { integer(value) }
    public mutating func u32(_ value: UInt32) { integer(value) }
    public mutating func u64(_ value: UInt64) { integer(value) }
    public mutating func i32(_ value: Int32) { integer(UInt32(bitPattern: value)) }

    public mutating func data(_ value: [UInt8]) {
        u32(UInt32(truncatingIfNeeded: value.count))
        bytes.append(contentsOf: value)
    }

    public mutating func string(_ value: String) { data(Array(value.utf8)) }

    public mutating func strings(_ values: [String]) {
        u32(UInt32(truncatingIfNeeded: values.count))
        for value in values { string(value) }
    }

    /// Bytes with no length prefix: the rest of the frame.
    public mutating func rest(_ value: [UInt8]) { bytes.append(contentsOf: value) }

    private mutating func integer<T: FixedWidthInteger>(_ value: T) {
        var remaining = value.littleEndian
        for _ in 0..<(T.bitWidth / 8) {
            bytes.append(UInt8(truncatingIfNeeded: remaining))
            remaining >>= 8
        }
    }
}

/// Reads the fields of one frame's body; every read is bounds-checked and
/// names its field when the frame ends too soon.
public struct WireReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var offset: Int

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public var remaining: Int { bytes.count - offset }

    public mutating func u8(_ field: String) throws(AgentProtocolError) -> UInt8 { try integer(field) }
    public mutating func u16(_ field: String) throws(AgentProtocolError) -> UInt16 { try integer(field) }
    public mutating func u32(_ field: String) throws(AgentProtocolError) -> UInt32 { try integer(field) }
    public mutating func u64(_ field: String) throws(AgentProtocolError) -> UInt64 { try integer(field) }
    public mutating func i32(_ field: String) throws(AgentProtocolError) -> Int32 { Int32(bitPattern: try integer(field) as UInt32) }

    public mutating func data(_ field: String) throws(AgentProtocolError) -> [UInt8] {
        let count = Int(try u32(field))
        guard count <= remaining else { throw .truncated(field: field) }
        let value = Array(bytes[offset..<(offset + count)])
        offset += count
        return value
    }

    public mutating func string(_ field: String) throws(AgentProtocolError) -> String {
        String(decoding: try data(field), as: UTF8.self)
    }

    /// A list of strings; `limit` bounds the count before anything is
    /// allocated for it (each entry also needs at least its 4 length bytes).
    public mutating func strings(_ field: String, limit: Int) throws(AgentProtocolError) -> [String] {
        let count = try u32(field)
        guard Int(count) <= limit else { throw .invalidField(field: field, value: UInt64(count)) }
        guard Int(count) * 4 <= remaining else { throw .truncated(field: field) }
        var values: [String] = []
        values.reserveCapacity(Int(count))
        for _ in 0..<count { values.append(try string(field)) }
        return values
    }

    /// The rest of the frame as raw bytes.
    public mutating func rest() -> [UInt8] {
        let value = Array(bytes[offset...])
        offset = bytes.count
        return value
    }

    /// Refuses bytes after the last field.
    public func finish(_ frame: FrameType) throws(AgentProtocolError) {
        guard remaining == 0 else { throw .trailingBytes(frame: frame, count: remaining) }
    }

    private mutating func integer<T: FixedWidthInteger>(_ field: String) throws(AgentProtocolError) -> T {
        let size = T.bitWidth / 8
        guard size <= remaining else { throw .truncated(field: field) }
        var value: T = 0
        for index in 0..<size {
            value |= T(truncatingIfNeeded: bytes[offset + index]) << (8 * index)
        }
        offset += size
        return value
    }
}
