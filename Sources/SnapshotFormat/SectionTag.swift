/// The 4-byte name of a tagged section ("CPUI", "GMEM", "VBLK"...), stored
/// as the ASCII bytes in order.
public struct SectionTag: Hashable, Sendable, CustomStringConvertible {
    /// The four bytes, first byte lowest (as they appear in the file, read little-endian).
    public let rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// A tag from a 4-character ASCII literal in the source. Only code names
    /// tags, so a wrong literal is a programming error caught by the tests.
    public init(_ text: StaticString) {
        precondition(text.utf8CodeUnitCount == 4, "a section tag is 4 ASCII bytes")
        var value: UInt32 = 0
        for index in 0..<4 {
            // SAFETY: index < utf8CodeUnitCount, checked just above.
            value |= UInt32(text.utf8Start[index]) << (8 * index)
        }
        rawValue = value
    }

    /// The tag as text; bytes outside printable ASCII as `\xNN`.
    public var description: String {
        var text = ""
        for index in 0..<4 {
            let byte = UInt8(truncatingIfNeeded: rawValue >> (8 * index))
            if (0x20...0x7E).contains(byte) && byte != UInt8(ascii: "\\") {
                text.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                text += "\\x" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return text
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
