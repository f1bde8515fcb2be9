import Testing
import ACPI

/// Decodes a PkgLength at the start of `bytes`: (value, bytes used).
private func decodePkgLength(_ bytes: [UInt8]) -> (value: Int, size: Int) {
    let lead = Int(bytes[0])
    let following = lead >> 6
    if following == 0 { return (lead & 0x3F, 1) }
    var value = lead & 0x0F
    for index in 0..<following {
        value |= Int(bytes[1 + index]) << (4 + 8 * index)
    }
    return (value, 1 + following)
}

@Suite("AML encoder")
struct AMLTests {
    @Test("PkgLength values encode in 1, 2, 3 or 4 bytes at the spec's boundaries",
          arguments: [
              (0, [0x00]),
              (63, [0x3F]),
              (64, [0x40, 0x04]),
              (0x123, [0x43, 0x12]),
              (4095, [0x4F, 0xFF]),
              (4096, [0x80, 0x00, 0x01]),
              (0xF_FFFF, [0x8F, 0xFF, 0xFF]),
              (0x10_0000, [0xC0, 0x00, 0x00, 0x01]),
              (0xFFF_FFFF, [0xCF, 0xFF, 0xFF, 0xFF]),
          ] as [(Int, [UInt8])])
    func pkgLengthValues(value: Int, expected: [UInt8]) throws {
        #expect(try AML.pkgLength(value) == expected)
    }

    @Test("PkgLength beyond 28 bits or negative is rejected")
    func pkgLengthTooLarge() {
        #expect(throws: ACPIError.amlObjectTooLarge(0x1000_0000, max: 0xFFF_FFFF)) {
            try AML.pkgLength(0x1000_0000)
        }
        #expect(throws: ACPIError.self) { try AML.pkgLength(-1) }
    }

    @Test("PkgLength for a content length counts its own bytes and picks the shortest form",
          arguments: [
              (0, [0x01]),
              (62, [0x3F]),             // 62 + 1 = 63 still fits one byte
              (63, [0x41, 0x04]),       // 63 + 1 = 64 does not: 63 + 2 = 65
              (4093, [0x4F, 0xFF]),     // 4093 + 2 = 4095
              (4094, [0x81, 0x00, 0x01]),  // 4094 + 2 = 4096 too big for two bytes: 4097
              (0xF_FFFC, [0x8F, 0xFF, 0xFF]),
              (0xF_FFFD, [0xC1, 0x00, 0x00, 0x01]),
          ] as [(Int, [UInt8])])
    func pkgLengthForContent(content: Int, expected: [UInt8]) throws {
        let encoded = try AML.pkgLength(contentLength: content)
        #expect(encoded == expected)
        let decoded = decodePkgLength(encoded)
        #expect(decoded.size == encoded.count)
        #expect(decoded.value == content + encoded.count)
    }

    @Test("every content length around the boundaries round-trips")
    func pkgLengthRoundTrip() throws {
        let around = [60...70, 4085...4100, 0xF_FFF0...0x10_0005].flatMap { Array($0) }
        for content in around {
            let encoded = try AML.pkgLength(contentLength: content)
            let decoded = decodePkgLength(encoded)
            #expect(decoded.value == content + encoded.count, "content \(content)")
            // Shortest: one byte fewer would not hold the value.
            let limit = [0, 0x3F, 0xFFF, 0xF_FFFF][encoded.count - 1]
            #expect(encoded.count == 1 || content + encoded.count - 1 > limit, "content \(content)")
        }
    }

    @Test("integers use the smallest encoding",
          arguments: [
              (0, [0x00]),
              (1, [0x01]),
              (2, [0x0A, 0x02]),
              (0xFF, [0x0A, 0xFF]),
              (0x100, [0x0B, 0x00, 0x01]),
              (0xFFFF, [0x0B, 0xFF, 0xFF]),
              (0x1_0000, [0x0C, 0x00, 0x00, 0x01, 0x00]),
              (0xFFFF_FFFF, [0x0C, 0xFF, 0xFF, 0xFF, 0xFF]),
              (0x1_0000_0000, [0x0E, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00]),
              (UInt64.max, [0x0E, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
          ] as [(UInt64, [UInt8])])
    func integers(value: UInt64, expected: [UInt8]) {
        #expect(AML.integer(value) == expected)
    }

    @Test("name strings: padding, root and parent prefixes, dual and multi segment paths")
    func nameStrings() throws {
        #expect(try AML.nameString("_S5") == Array("_S5_".utf8))
        #expect(try AML.nameString("COM1") == Array("COM1".utf8))
        #expect(try AML.nameString("\\_SB") == [0x5C] + Array("_SB_".utf8))
        #expect(try AML.nameString("\\_SB.PCI0") == [0x5C, 0x2E] + Array("_SB_PCI0".utf8))
        #expect(try AML.nameString("\\_SB.PCI0.COM1") == [0x5C, 0x2F, 3] + Array("_SB_PCI0COM1".utf8))
        #expect(try AML.nameString("^^RTC") == [0x5E, 0x5E] + Array("RTC_".utf8))
        #expect(try AML.nameString("\\") == [0x5C, 0x00])
    }

    @Test("invalid names are rejected", arguments: ["", "TOOLONG", "1ABC", "com1", "\\_SB..PCI0", "A-B", "^\\X"])
    func invalidNames(name: String) {
        #expect(throws: ACPIError.invalidAMLName(name)) { try AML.nameString(name) }
    }

    @Test("EISA IDs compress to ASL's EisaId() DWord",
          arguments: [
              ("PNP0A03", [0x0C, 0x41, 0xD0, 0x0A, 0x03]),
              ("PNP0A08", [0x0C, 0x41, 0xD0, 0x0A, 0x08]),
              ("PNP0501", [0x0C, 0x41, 0xD0, 0x05, 0x01]),
              ("PNP0C02", [0x0C, 0x41, 0xD0, 0x0C, 0x02]),
              ("ACPI0F0", nil),
          ] as [(String, [UInt8]?)])
    func eisaIDs(id: String, expected: [UInt8]?) throws {
        if let expected {
            #expect(try AML.eisaID(id) == expected)
        } else {
            #expect(throws: ACPIError.invalidEISAID(id)) { try AML.eisaID(id) }
        }
    }

    @Test("malformed EISA IDs are rejected", arguments: ["pnp0a03", "PNP0A0", "PNP0A0G", "PN10A03"])
    func invalidEISAIDs(id: String) {
        #expect(throws: ACPIError.invalidEISAID(id)) { try AML.eisaID(id) }
    }

    @Test("strings are NUL-terminated ASCII")
    func strings() throws {
        #expect(try AML.string("COM1") == [0x0D, 0x43, 0x4F, 0x4D, 0x31, 0x00])
        #expect(throws: ACPIError.self) { try AML.string("a\u{0}b") }
        #expect(throws: ACPIError.self) { try AML.string("é") }
    }

    @Test("Name(_S5_, Package(){5, 0, 0, 0}) encodes byte for byte")
    func s5Name() throws {
        let s5 = try AML.name("_S5", AML.package([AML.integer(5), AML.integer(0), AML.integer(0), AML.integer(0)]))
        #expect(s5 == [0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x07, 0x04, 0x0A, 0x05, 0x00, 0x00, 0x00])
    }

    @Test("packages hold at most 255 elements")
    func packageLimit() throws {
        let big = try AML.package(Array(repeating: AML.integer(0), count: 255))
        #expect(big[0] == 0x12)
        #expect(decodePkgLength(Array(big[1...])).value == big.count - 1)
        #expect(throws: ACPIError.amlObjectTooLarge(256, max: 255)) {
            try AML.package(Array(repeating: AML.integer(0), count: 256))
        }
    }

    @Test("Device and Scope wrap their terms in a PkgLength")
    func deviceAndScope() throws {
        let uid = try AML.name("_UID", AML.integer(1))
        #expect(uid == [0x08, 0x5F, 0x55, 0x49, 0x44, 0x01])
        let device = try AML.device("COM1", [uid])
        #expect(device == [0x5B, 0x82, 0x0B, 0x43, 0x4F, 0x4D, 0x31] + uid)
        let scope = try AML.scope("\\_SB", [device])
        #expect(scope == [0x10, UInt8(1 + 5 + device.count), 0x5C, 0x5F, 0x53, 0x42, 0x5F] + device)

        // A body longer than 63 bytes needs a two-byte PkgLength.
        let large = try AML.device("BIG", Array(repeating: uid, count: 20))  // 4 + 120 bytes of content
        #expect(Array(large[0..<2]) == [0x5B, 0x82])
        let length = decodePkgLength(Array(large[2...]))
        #expect(length.size == 2)
        #expect(length.value == large.count - 2)
    }

    @Test("buffers carry their size as an integer")
    func buffers() throws {
        #expect(try AML.buffer([0xAA, 0xBB]) == [0x11, 0x05, 0x0A, 0x02, 0xAA, 0xBB])
        #expect(try AML.buffer([]) == [0x11, 0x02, 0x00])
    }

    @Test("a resource template ends with an End Tag whose checksum zeroes the sum")
    func resourceTemplate() throws {
        let io = AML.Resource.io(minimum: 0x3F8, maximum: 0x3F8, alignment: 1, length: 8)
        #expect(io == [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08])
        let template = try AML.resourceTemplate([io])
        #expect(Array(template[0..<4]) == [0x11, 0x0D, 0x0A, 0x0A])
        let data = Array(template[4...])
        #expect(Array(data[0..<8]) == io)
        #expect(data[8] == 0x79)
        #expect(data.reduce(UInt8(0), &+) == 0)
        #expect(data[9] != 0)
    }

    @Test("address-space and interrupt descriptors match the spec's layouts")
    func descriptors() {
        #expect(AML.Resource.wordBusNumber(0...255) ==
            [0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x01])
        #expect(AML.Resource.wordIO(0...0x0CF7) ==
            [0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03, 0x00, 0x00, 0x00, 0x00, 0xF7, 0x0C, 0x00, 0x00, 0xF8, 0x0C])
        #expect(AML.Resource.dwordMemory(0xC000_0000...0xDFFF_FFFF) ==
            [0x87, 0x17, 0x00, 0x00, 0x0C, 0x01,
             0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xC0, 0xFF, 0xFF, 0xFF, 0xDF,
             0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20])
        let qword = AML.Resource.qwordMemory(0x100_0000_0000...0x10F_FFFF_FFFF)
        #expect(qword.count == 46)
        #expect(Array(qword[0..<6]) == [0x8A, 0x2B, 0x00, 0x00, 0x0C, 0x01])
        #expect(Bytes(qword).u64(14) == 0x100_0000_0000)
        #expect(Bytes(qword).u64(22) == 0x10F_FFFF_FFFF)
        #expect(Bytes(qword).u64(38) == 0x10_0000_0000)
        #expect(AML.Resource.qwordMemory(0...0xFFF, consumer: true)[4] == 0x0D)
        #expect(AML.Resource.memory32Fixed(base: 0xE000_0000, length: 0x1000_0000) ==
            [0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xE0, 0x00, 0x00, 0x00, 0x10])
        #expect(AML.Resource.extendedInterrupt([4]) == [0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00])
        #expect(AML.Resource.extendedInterrupt([9, 10], edgeTriggered: false, activeLow: true, shared: true) ==
            [0x89, 0x0A, 0x00, 0x0D, 0x02, 0x09, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x00, 0x00])
    }
}
