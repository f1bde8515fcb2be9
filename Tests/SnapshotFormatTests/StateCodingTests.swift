import Testing
@testable import SnapshotFormat

@Suite("State encoder and decoder")
struct StateCodingTests {
    @Test("every primitive reads back as written, little-endian")
    func primitivesRoundTrip() throws {
        var encoder = StateEncoder()
        encoder.encode(UInt8(0xAB))
        encoder.encode(UInt16(0x1234))
        encoder.encode(UInt32(0xDEAD_BEEF))
        encoder.encode(UInt64(0x0102_0304_0506_0708))
        encoder.encode(Int32(-2))
        encoder.encode(true)
        encoder.encode(false)
        encoder.encode(bytes: [9, 8, 7])
        encoder.encode("héllo")
        encoder.encode(array: [UInt16(1), 2, 3]) { $0.encode($1) }
        #expect(encoder.bytes.prefix(3) == [0xAB, 0x34, 0x12])

        var decoder = StateDecoder(encoder.bytes)
        #expect(try decoder.decode(UInt8.self) == 0xAB)
        #expect(try decoder.decode(UInt16.self) == 0x1234)
        #expect(try decoder.decode(UInt32.self) == 0xDEAD_BEEF)
        #expect(try decoder.decode(UInt64.self) == 0x0102_0304_0506_0708)
        #expect(try decoder.decode(Int32.self) == -2)
        #expect(try decoder.decodeBool() == true)
        #expect(try decoder.decodeBool() == false)
        #expect(try decoder.decodeBytes(maximumLength: 16) == [9, 8, 7])
        #expect(try decoder.decodeString(maximumLength: 16) == "héllo")
        let array = try decoder.decodeArray(maximumCount: 8, minimumElementSize: 2) { (decoder) throws(StateDecodingError) in
            try decoder.decode(UInt16.self)
        }
        #expect(array == [1, 2, 3])
        try decoder.finish()
    }

    @Test("nested sections read back, and a reader skips a section it does not know")
    func nestedSections() throws {
        var encoder = StateEncoder()
        encoder.section(SectionTag("OUTR")) { outer in
            outer.encode(UInt32(7))
            outer.section(SectionTag("NEW!")) { $0.encode(bytes: [1, 2, 3, 4, 5]) }
            outer.section(SectionTag("INNR")) { $0.encode(UInt16(42)) }
        }
        encoder.section(SectionTag("LAST")) { $0.encode(true) }

        var decoder = StateDecoder(encoder.bytes)
        let inner = try decoder.section(SectionTag("OUTR")) { (outer) throws(StateDecodingError) -> UInt16 in
            #expect(try outer.decode(UInt32.self) == 7)
            // An older reader meets a section added later and steps over it.
            if try outer.peekTag() != SectionTag("INNR") { try outer.skipSection() }
            return try outer.section(SectionTag("INNR")) { (body) throws(StateDecodingError) in try body.decode(UInt16.self) }
        }
        #expect(inner == 42)
        #expect(try decoder.section(SectionTag("LAST")) { (body) throws(StateDecodingError) in try body.decodeBool() })
        try decoder.finish()
    }

    @Test("a section with another tag is refused, naming both tags and the offset, and nothing is consumed")
    func badTag() throws {
        var encoder = StateEncoder()
        encoder.encode(UInt8(0))
        encoder.section(SectionTag("VBLK")) { $0.encode(UInt8(1)) }
        var decoder = StateDecoder(encoder.bytes)
        _ = try decoder.decode(UInt8.self)
        #expect(throws: StateDecodingError.badTag(offset: 1, expected: SectionTag("VNET"), found: SectionTag("VBLK"))) {
            try decoder.section(SectionTag("VNET")) { (body) throws(StateDecodingError) in try body.decode(UInt8.self) }
        }
        #expect(decoder.offset == 1)
    }

    @Test("a section body its reader leaves unread is trailing bytes")
    func sectionTrailingBytes() throws {
        var encoder = StateEncoder()
        encoder.section(SectionTag("DEVS")) { $0.encode(UInt32(1)); $0.encode(UInt8(2)) }
        var decoder = StateDecoder(encoder.bytes)
        #expect(throws: StateDecodingError.trailingBytes(offset: 12, count: 1)) {
            try decoder.section(SectionTag("DEVS")) { (body) throws(StateDecodingError) in try body.decode(UInt32.self) }
        }
    }

    @Test("reads past the end fail with the offset instead of trapping")
    func truncation() throws {
        var decoder = StateDecoder([1, 2, 3])
        #expect(throws: StateDecodingError.truncated(offset: 0, needed: 4, available: 3)) { try decoder.decode(UInt32.self) }
        _ = try decoder.decode(UInt16.self)
        #expect(throws: StateDecodingError.truncated(offset: 2, needed: 8, available: 1)) { try decoder.decode(UInt64.self) }
        #expect(throws: StateDecodingError.trailingBytes(offset: 2, count: 1)) { try decoder.finish() }
        // A section whose length runs past the input.
        var sectionDecoder = StateDecoder([0x41, 0x42, 0x43, 0x44, 10, 0, 0, 0, 1, 2])
        #expect(throws: StateDecodingError.truncated(offset: 8, needed: 10, available: 2)) { try sectionDecoder.skipSection() }
    }

    @Test("a huge count in 8 bytes of input fails without allocating for it")
    func hugeCount() throws {
        // Count 0xFFFFFFFF, then 4 bytes: it passes a generous caller limit,
        // but 4 billion elements cannot fit in 4 bytes.
        let input: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]
        var decoder = StateDecoder(input)
        #expect(throws: StateDecodingError.truncated(offset: 4, needed: 0xFFFF_FFFF, available: 4)) {
            try decoder.decodeArray(maximumCount: .max) { (decoder) throws(StateDecodingError) in try decoder.decode(UInt8.self) }
        }
        var bytesDecoder = StateDecoder(input)
        #expect(throws: StateDecodingError.truncated(offset: 4, needed: 0xFFFF_FFFF, available: 4)) {
            try bytesDecoder.decodeBytes(maximumLength: .max)
        }
        // Element sizes multiply: 2^31 elements of 8 bytes each.
        var wideDecoder = StateDecoder([0, 0, 0, 0x80, 0, 0, 0, 0])
        #expect(throws: StateDecodingError.truncated(offset: 4, needed: 0x4_0000_0000, available: 4)) {
            try wideDecoder.decodeArray(maximumCount: .max, minimumElementSize: 8) { (decoder) throws(StateDecodingError) in try decoder.decode(UInt64.self) }
        }
    }

    @Test("lengths and counts over the caller's limit are refused")
    func limits() throws {
        var encoder = StateEncoder()
        encoder.encode(bytes: [UInt8](repeating: 7, count: 100))
        var decoder = StateDecoder(encoder.bytes)
        #expect(throws: StateDecodingError.lengthOverLimit(offset: 0, length: 100, limit: 99)) {
            try decoder.decodeBytes(maximumLength: 99)
        }
        var sectionEncoder = StateEncoder()
        sectionEncoder.section(SectionTag("BIG ")) { $0.append(raw: [UInt8](repeating: 0, count: 50)) }
        var sectionDecoder = StateDecoder(sectionEncoder.bytes)
        #expect(throws: StateDecodingError.lengthOverLimit(offset: 4, length: 50, limit: 49)) {
            try sectionDecoder.nextSection(maximumLength: 49)
        }
    }

    @Test("a Bool other than 0 or 1 and a string that is not UTF-8 are invalid values")
    func invalidValues() throws {
        var boolDecoder = StateDecoder([2])
        #expect(throws: StateDecodingError.invalidValue(offset: 0, what: "Bool")) { try boolDecoder.decodeBool() }
        var stringDecoder = StateDecoder([2, 0, 0, 0, 0xC3, 0x28])
        #expect(throws: StateDecodingError.invalidValue(offset: 0, what: "UTF-8 string")) {
            try stringDecoder.decodeString(maximumLength: 16)
        }
    }

    @Test("offsets in a slice are the slice's own indices")
    func sliceOffsets() throws {
        let bytes: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 1]
        var decoder = StateDecoder(bytes[8...])
        _ = try decoder.decode(UInt8.self)
        #expect(throws: StateDecodingError.truncated(offset: 9, needed: 1, available: 0)) { try decoder.decode(UInt8.self) }
    }

    @Test("CRC-32C matches the standard check value and tag text is readable")
    func checksumAndTags() {
        #expect(CRC32C.checksum(of: Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum(of: [UInt8]()) == 0)
        #expect(SectionTag("CPUI").description == "CPUI")
        #expect(SectionTag(rawValue: 0x0041_4243).description == "CBA\\x00")
    }
}
