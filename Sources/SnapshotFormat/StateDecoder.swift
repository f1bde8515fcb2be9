/// Why saved state could not be decoded. Offsets are byte offsets in the
/// input the decoder was made from (for a snapshot file: in the file).
public enum StateDecodingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `needed` bytes were wanted at `offset`, only `available` remain.
    case truncated(offset: Int, needed: UInt64, available: Int)
    /// A section at `offset` has tag `found` where `expected` belongs.
    case badTag(offset: Int, expected: SectionTag, found: SectionTag)
    /// A length or count at `offset` is above the caller's limit, or would
    /// need more bytes than remain.
    case lengthOverLimit(offset: Int, length: UInt64, limit: UInt64)
    /// A section or the input has `count` bytes left over after its fields.
    case trailingBytes(offset: Int, count: Int)
    /// A value that is not one of its type's encodings (a Bool of 2, bad UTF-8...).
    case invalidValue(offset: Int, what: String)

    public var description: String {
        switch self {
        case let .truncated(offset, needed, available):
            "truncated at offset \(offset): \(needed) bytes needed, \(available) left"
        case let .badTag(offset, expected, found):
            "section at offset \(offset) is '\(found)', expected '\(expected)'"
        case let .lengthOverLimit(offset, length, limit):
            "length \(length) at offset \(offset) is over the limit of \(limit)"
        case let .trailingBytes(offset, count):
            "\(count) unread bytes at offset \(offset)"
        case let .invalidValue(offset, what):
            "invalid \(what) at offset \(offset)"
        }
    }
}

/// Reads what `StateEncoder` wrote. It never traps and never allocates more
/// than the input: every read is bounds-checked, each length or count is
/// capped by a caller-given maximum and by the bytes that remain, and every
/// failure is a `StateDecodingError` naming the offset.
public struct StateDecoder: Sendable {
    /// The input; its indices are the offsets errors report.
    private let bytes: ArraySlice<UInt8>
    /// The next byte to read.
    public private(set) var offset: Int

    /// Decodes `bytes`; offsets are `bytes`' own indices, so a slice of a
    /// file reports offsets in the file.
    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        offset = bytes.startIndex
    }

    public init(_ bytes: [UInt8]) {
        self.init(bytes[...])
    }

    /// Bytes not yet read.
    public var remaining: Int { bytes.endIndex - offset }

    public var isAtEnd: Bool { offset == bytes.endIndex }

    /// Throws unless every byte has been read: state must not carry bytes
    /// its reader ignores (a writer and reader out of step).
    public func finish() throws(StateDecodingError) {
        guard isAtEnd else { throw .trailingBytes(offset: offset, count: remaining) }
    }

    /// The next `count` bytes, consumed.
    public mutating func take(_ count: Int) throws(StateDecodingError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw .truncated(offset: offset, needed: UInt64(max(count, 0)), available: remaining)
        }
        let slice = bytes[offset..<(offset + count)]
        offset += count
        return slice
    }

    /// A little-endian value of `T`'s width.
    public mutating func decode<T: FixedWidthInteger>(_ type: T.Type = T.self) throws(StateDecodingError) -> T {
        let field = try take(T.bitWidth / 8)
        var value: T = 0
        for (index, byte) in field.enumerated() {
            value |= T(truncatingIfNeeded: byte) << (8 * index)
        }
        return value
    }

    /// A Bool: exactly 0 or 1.
    public mutating func decodeBool() throws(StateDecodingError) -> Bool {
        let start = offset
        switch try decode(UInt8.self) {
        case 0: return false
        case 1: return true
        default: throw .invalidValue(offset: start, what: "Bool")
        }
    }

    /// A UInt32 length or count, checked against `maximum` and against the
    /// input left: `count` elements of at least `minimumElementSize` bytes
    /// each must fit in it, so no count makes a caller reserve more than that.
    public mutating func decodeCount(maximum: Int, minimumElementSize: Int = 1) throws(StateDecodingError) -> Int {
        let start = offset
        let count = Int(try decode(UInt32.self))
        guard count <= maximum else {
            throw .lengthOverLimit(offset: start, length: UInt64(count), limit: UInt64(max(maximum, 0)))
        }
        let (bytesNeeded, overflow) = count.multipliedReportingOverflow(by: max(minimumElementSize, 0))
        guard !overflow, bytesNeeded <= remaining else {
            throw .truncated(offset: offset, needed: overflow ? UInt64.max : UInt64(bytesNeeded), available: remaining)
        }
        return count
    }

    /// Length-prefixed bytes of at most `maximumLength`.
    public mutating func decodeBytes(maximumLength: Int) throws(StateDecodingError) -> [UInt8] {
        let length = try decodeCount(maximum: maximumLength)
        return Array(try take(length))
    }

    /// A length-prefixed UTF-8 string of at most `maximumLength` bytes.
    public mutating func decodeString(maximumLength: Int) throws(StateDecodingError) -> String {
        let start = offset
        let bytes = try decodeBytes(maximumLength: maximumLength)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .invalidValue(offset: start, what: "UTF-8 string")
        }
        return text
    }

    /// A counted array of at most `maximumCount` elements, each read by
    /// `decodeElement`, which reads at least `minimumElementSize` bytes.
    public mutating func decodeArray<Element>(
        maximumCount: Int, minimumElementSize: Int = 1,
        _ decodeElement: (inout StateDecoder) throws(StateDecodingError) -> Element
    ) throws(StateDecodingError) -> [Element] {
        let count = try decodeCount(maximum: maximumCount, minimumElementSize: minimumElementSize)
        var elements: [Element] = []
        elements.reserveCapacity(count)
        for _ in 0..<count { elements.append(try decodeElement(&self)) }
        return elements
    }

    /// The next section's tag, without consuming anything.
    public func peekTag() throws(StateDecodingError) -> SectionTag {
        var copy = self
        return SectionTag(rawValue: try copy.decode(UInt32.self))
    }

    /// Consumes the next section whatever its tag; returns the tag and a
    /// decoder over its body (offsets still in the whole input).
    public mutating func nextSection(maximumLength: Int = .max) throws(StateDecodingError) -> (tag: SectionTag, body: StateDecoder) {
        let tag = SectionTag(rawValue: try decode(UInt32.self))
        let start = offset
        let length = try decode(UInt32.self)
        guard length <= maximumLength else {
            throw .lengthOverLimit(offset: start, length: UInt64(length), limit: UInt64(max(maximumLength, 0)))
        }
        return (tag, StateDecoder(try take(Int(length))))
    }

    /// Skips the next section whatever its tag (one this reader does not know).
    public mutating func skipSection() throws(StateDecodingError) {
        _ = try nextSection()
    }

    /// Reads the section tagged `tag` with `body`, which must read all of it.
    /// A different tag is `badTag`, and nothing is consumed.
    public mutating func section<Result>(
        _ tag: SectionTag, maximumLength: Int = .max,
        _ body: (inout StateDecoder) throws(StateDecodingError) -> Result
    ) throws(StateDecodingError) -> Result {
        let found = try peekTag()
        guard found == tag else { throw .badTag(offset: offset, expected: tag, found: found) }
        var (_, sectionBody) = try nextSection(maximumLength: maximumLength)
        let result = try body(&sectionBody)
        try sectionBody.finish()
        return result
    }
}
