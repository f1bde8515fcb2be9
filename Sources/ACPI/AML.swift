/// A small encoder for AML, the bytecode of the DSDT: just the objects a
/// static platform description needs (names, integers, strings, packages,
/// scopes, devices and resource templates), no methods. Each function returns
/// the encoded bytes of one term; compose them by concatenation.
///
/// Names are ASL-style paths: "_S5", "\\_SB.PCI0", "^PCI0"; segments shorter
/// than four characters are padded with '_' as ASL compilers do.
public enum AML {
    // MARK: Opcodes and prefixes (ACPI 6.5, chapter 20)

    static let zeroOp: UInt8 = 0x00
    static let oneOp: UInt8 = 0x01
    static let nameOp: UInt8 = 0x08
    static let bytePrefix: UInt8 = 0x0A
    static let wordPrefix: UInt8 = 0x0B
    static let dwordPrefix: UInt8 = 0x0C
    static let stringPrefix: UInt8 = 0x0D
    static let qwordPrefix: UInt8 = 0x0E
    static let scopeOp: UInt8 = 0x10
    static let bufferOp: UInt8 = 0x11
    static let packageOp: UInt8 = 0x12
    static let extOpPrefix: UInt8 = 0x5B
    static let deviceOp: UInt8 = 0x82  // after extOpPrefix
    static let nullName: UInt8 = 0x00
    static let dualNamePrefix: UInt8 = 0x2E
    static let multiNamePrefix: UInt8 = 0x2F
    static let rootChar: UInt8 = 0x5C  // '\'
    static let parentPrefixChar: UInt8 = 0x5E  // '^'

    /// Largest value a PkgLength can hold (28 bits).
    public static let maxPkgLength = 0x0FFF_FFFF
    /// Package's NumElements is one byte.
    public static let maxPackageElements = 255

    // MARK: PkgLength

    /// The PkgLength encoding of `value`, the length of an object from the
    /// first PkgLength byte to its end (so it counts its own 1-4 bytes).
    /// Up to 63 fits in one byte (bits 0-5); beyond that the lead byte holds
    /// the byte count in bits 6-7 and the low nibble, and each following byte
    /// eight more bits.
    public static func pkgLength(_ value: Int) throws(ACPIError) -> [UInt8] {
        guard value >= 0, value <= maxPkgLength else {
            throw .amlObjectTooLarge(value, max: maxPkgLength)
        }
        if value <= 0x3F {
            return [UInt8(value)]
        }
        let followingBytes = value <= 0xFFF ? 1 : value <= 0xF_FFFF ? 2 : 3
        var out: [UInt8] = [UInt8(followingBytes << 6) | UInt8(value & 0x0F)]
        for index in 0..<followingBytes {
            out.append(UInt8(truncatingIfNeeded: value >> (4 + 8 * index)))
        }
        return out
    }

    /// The PkgLength for an object whose bytes after the PkgLength number
    /// `contentLength`: the shortest encoding whose value, which includes
    /// the encoding's own size, it can hold.
    public static func pkgLength(contentLength: Int) throws(ACPIError) -> [UInt8] {
        guard contentLength >= 0 else { throw .amlObjectTooLarge(contentLength, max: maxPkgLength) }
        let total = contentLength + 1 <= 0x3F ? contentLength + 1
            : contentLength + 2 <= 0xFFF ? contentLength + 2
            : contentLength + 3 <= 0xF_FFFF ? contentLength + 3
            : contentLength + 4
        return try pkgLength(total)
    }

    /// `opcode` PkgLength `content`.
    static func lengthPrefixed(_ opcode: [UInt8], _ content: [UInt8]) throws(ACPIError) -> [UInt8] {
        opcode + (try pkgLength(contentLength: content.count)) + content
    }

    // MARK: Data objects

    /// An integer in its shortest form: ZeroOp, OneOp, or Byte/Word/DWord/QWord
    /// prefix + little-endian constant. (OnesOp is avoided: its width
    /// depends on the definition block's revision.)
    public static func integer(_ value: UInt64) -> [UInt8] {
        var out: [UInt8]
        switch value {
        case 0: return [zeroOp]
        case 1: return [oneOp]
        case ...0xFF: out = [bytePrefix]; out.append(UInt8(value))
        case ...0xFFFF: out = [wordPrefix]; out.appendLittleEndian(UInt16(value))
        case ...0xFFFF_FFFF: out = [dwordPrefix]; out.appendLittleEndian(UInt32(value))
        default: out = [qwordPrefix]; out.appendLittleEndian(value)
        }
        return out
    }

    /// A NUL-terminated ASCII string.
    public static func string(_ value: String) throws(ACPIError) -> [UInt8] {
        let bytes = Array(value.utf8)
        guard bytes.allSatisfy({ $0 != 0 && $0 < 0x80 }) else { throw .invalidAMLString(value) }
        return [stringPrefix] + bytes + [0]
    }

    /// A compressed EISA ID such as "PNP0A08", as ASL's EisaId() encodes it:
    /// three 5-bit letters and four hex digits in a DWord, always with the
    /// DWord prefix (disassemblers recognise EISA IDs by it).
    public static func eisaID(_ id: String) throws(ACPIError) -> [UInt8] {
        let chars = Array(id.utf8)
        guard chars.count == 7,
              chars[0..<3].allSatisfy({ $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") })
        else { throw .invalidEISAID(id) }
        var digits: [UInt8] = []
        for char in chars[3..<7] {
            guard let digit = hexDigitValue(char) else { throw .invalidEISAID(id) }
            digits.append(digit)
        }
        let letters = chars[0..<3].map { $0 - 0x40 }  // 'A' is 1
        return [
            dwordPrefix,
            letters[0] << 2 | letters[1] >> 3,
            (letters[1] & 0x07) << 5 | letters[2],
            digits[0] << 4 | digits[1],
            digits[2] << 4 | digits[3],
        ]
    }

    private static func hexDigitValue(_ char: UInt8) -> UInt8? {
        switch char {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): char - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): char - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// Package(){elements}: each element an encoded data object.
    public static func package(_ elements: [[UInt8]]) throws(ACPIError) -> [UInt8] {
        guard elements.count <= maxPackageElements else {
            throw .amlObjectTooLarge(elements.count, max: maxPackageElements)
        }
        return try lengthPrefixed([packageOp], [UInt8(elements.count)] + elements.joined())
    }

    /// Buffer(){bytes}.
    public static func buffer(_ bytes: [UInt8]) throws(ACPIError) -> [UInt8] {
        try lengthPrefixed([bufferOp], integer(UInt64(bytes.count)) + bytes)
    }

    // MARK: Names and namespace

    /// A NameString: optional '\' or '^' prefixes, then NullName, one
    /// segment, DualNamePrefix + two, or MultiNamePrefix + count + segments.
    public static func nameString(_ path: String) throws(ACPIError) -> [UInt8] {
        var rest = Substring(path)
        var out: [UInt8] = []
        if rest.first == "\\" {
            out.append(rootChar)
            rest = rest.dropFirst()
        } else {
            while rest.first == "^" {
                out.append(parentPrefixChar)
                rest = rest.dropFirst()
            }
        }
        if rest.isEmpty {
            guard !out.isEmpty else { throw .invalidAMLName(path) }
            out.append(nullName)
            return out
        }
        let segments = rest.split(separator: ".", omittingEmptySubsequences: false)
        guard segments.count <= 255 else { throw .invalidAMLName(path) }
        var encoded: [UInt8] = []
        for segment in segments {
            guard let seg = nameSegment(segment) else { throw .invalidAMLName(path) }
            encoded += seg
        }
        switch segments.count {
        case 1: break
        case 2: out.append(dualNamePrefix)
        default: out += [multiNamePrefix, UInt8(segments.count)]
        }
        return out + encoded
    }

    /// A 4-byte NameSeg, padded with '_', or nil if not a valid segment.
    private static func nameSegment(_ segment: Substring) -> [UInt8]? {
        let chars = Array(segment.utf8)
        guard (1...4).contains(chars.count) else { return nil }
        for (index, char) in chars.enumerated() {
            let isLetter = char >= UInt8(ascii: "A") && char <= UInt8(ascii: "Z")
            let isDigit = char >= UInt8(ascii: "0") && char <= UInt8(ascii: "9")
            let isUnderscore = char == UInt8(ascii: "_")
            guard isLetter || isUnderscore || (isDigit && index > 0) else { return nil }
        }
        return chars + Array(repeating: UInt8(ascii: "_"), count: 4 - chars.count)
    }

    /// Name(path, object).
    public static func name(_ path: String, _ object: [UInt8]) throws(ACPIError) -> [UInt8] {
        [nameOp] + (try nameString(path)) + object
    }

    /// Scope(path){terms}.
    public static func scope(_ path: String, _ terms: [[UInt8]]) throws(ACPIError) -> [UInt8] {
        try lengthPrefixed([scopeOp], nameString(path) + terms.joined())
    }

    /// Device(path){terms}.
    public static func device(_ path: String, _ terms: [[UInt8]]) throws(ACPIError) -> [UInt8] {
        try lengthPrefixed([extOpPrefix, deviceOp], nameString(path) + terms.joined())
    }

    // MARK: Resource templates

    /// ResourceTemplate(){descriptors}: a Buffer holding the descriptors and
    /// an End Tag whose checksum makes the whole template sum to zero.
    public static func resourceTemplate(_ descriptors: [[UInt8]]) throws(ACPIError) -> [UInt8] {
        var data = Array(descriptors.joined())
        data.append(Resource.endTag)
        data.append(ACPIChecksum.complement(of: data))
        return try buffer(data)
    }

    /// Resource descriptors (ACPI 6.5, section 6.4), for `resourceTemplate`.
    /// Address-space descriptors default to what a host bridge's windows
    /// are: produced (forwarded) by the device, fixed minimum and maximum,
    /// positive decode.
    public enum Resource {
        static let endTag: UInt8 = 0x79  // small item 0xF, length 1

        /// IO(Decode16, minimum, maximum, alignment, length): small item 0x8.
        public static func io(minimum: UInt16, maximum: UInt16, alignment: UInt8, length: UInt8) -> [UInt8] {
            var out: [UInt8] = [0x47, 0x01]  // 16-bit decode
            out.appendLittleEndian(minimum)
            out.appendLittleEndian(maximum)
            out += [alignment, length]
            return out
        }

        /// Memory32Fixed(ReadWrite/ReadOnly, base, length): large item 0x6.
        public static func memory32Fixed(base: UInt32, length: UInt32, writable: Bool = true) -> [UInt8] {
            var out: [UInt8] = [0x86, 0x09, 0x00, writable ? 1 : 0]
            out.appendLittleEndian(base)
            out.appendLittleEndian(length)
            return out
        }

        /// Interrupt(ResourceConsumer, Edge/Level, ActiveHigh/Low,
        /// Exclusive/Shared){gsi}: Extended Interrupt descriptor, large item
        /// 0x9. Its numbers are GSIs, with no ISA-IRQ translation.
        public static func extendedInterrupt(
            _ gsis: [UInt32], edgeTriggered: Bool = true, activeLow: Bool = false, shared: Bool = false
        ) -> [UInt8] {
            let flags: UInt8 = 0x01  // consumer
                | (edgeTriggered ? 0x02 : 0)
                | (activeLow ? 0x04 : 0)
                | (shared ? 0x08 : 0)
            var out: [UInt8] = [0x89]
            out.appendLittleEndian(UInt16(2 + 4 * gsis.count))
            out += [flags, UInt8(truncatingIfNeeded: gsis.count)]
            for gsi in gsis { out.appendLittleEndian(gsi) }
            return out
        }

        /// General flags of the address-space descriptors: bit 0 consumer,
        /// bit 1 subtractive decode (never), bit 2 min fixed, bit 3 max fixed.
        private static func generalFlags(consumer: Bool) -> UInt8 {
            0b1100 | (consumer ? 1 : 0)
        }

        /// WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode,
        /// 0, first, last, 0, count): Word Address Space descriptor, type 2.
        public static func wordBusNumber(_ buses: ClosedRange<UInt16>, consumer: Bool = false) -> [UInt8] {
            wordAddressSpace(type: 2, typeFlags: 0, range: buses, consumer: consumer)
        }

        /// WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode,
        /// EntireRange, 0, first, last, 0, count): Word Address Space
        /// descriptor, type 1.
        public static func wordIO(_ ports: ClosedRange<UInt16>, consumer: Bool = false) -> [UInt8] {
            wordAddressSpace(type: 1, typeFlags: 0b11, range: ports, consumer: consumer)
        }

        private static func wordAddressSpace(
            type: UInt8, typeFlags: UInt8, range: ClosedRange<UInt16>, consumer: Bool
        ) -> [UInt8] {
            var out: [UInt8] = [0x88]
            out.appendLittleEndian(UInt16(13))
            out += [type, generalFlags(consumer: consumer), typeFlags]
            out.appendLittleEndian(UInt16(0))  // granularity
            out.appendLittleEndian(range.lowerBound)
            out.appendLittleEndian(range.upperBound)
            out.appendLittleEndian(UInt16(0))  // translation offset
            out.appendLittleEndian(range.upperBound &- range.lowerBound &+ 1)
            return out
        }

        /// Type-specific flags of a memory range: read-write, not cacheable
        /// (device memory), AddressRangeMemory, no translation.
        private static let memoryFlags: UInt8 = 0x01

        /// DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed,
        /// NonCacheable, ReadWrite, 0, first, last, 0, length): DWord Address
        /// Space descriptor, large item 0x7.
        public static func dwordMemory(_ range: ClosedRange<UInt32>, consumer: Bool = false) -> [UInt8] {
            var out: [UInt8] = [0x87]
            out.appendLittleEndian(UInt16(23))
            out += [0, generalFlags(consumer: consumer), memoryFlags]
            out.appendLittleEndian(UInt32(0))
            out.appendLittleEndian(range.lowerBound)
            out.appendLittleEndian(range.upperBound)
            out.appendLittleEndian(UInt32(0))
            out.appendLittleEndian(range.upperBound &- range.lowerBound &+ 1)
            return out
        }

        /// QWordMemory(...) as `dwordMemory` with 64-bit fields: QWord
        /// Address Space descriptor, large item 0xA.
        public static func qwordMemory(_ range: ClosedRange<UInt64>, consumer: Bool = false) -> [UInt8] {
            var out: [UInt8] = [0x8A]
            out.appendLittleEndian(UInt16(43))
            out += [0, generalFlags(consumer: consumer), memoryFlags]
            out.appendLittleEndian(UInt64(0))
            out.appendLittleEndian(range.lowerBound)
            out.appendLittleEndian(range.upperBound)
            out.appendLittleEndian(UInt64(0))
            out.appendLittleEndian(range.upperBound &- range.lowerBound &+ 1)
            return out
        }
    }
}
