/// An IPv4 address, such as the MMDS address 169.254.169.254.
public struct IPv4Address: Hashable, Sendable, CustomStringConvertible {
    /// The address in host byte order (169.254.169.254 is 0xA9FE_A9FE).
    public let value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-decimal text: four decimal octets 0-255, no leading
    /// zeros (which some parsers read as octal), nothing else.
    public init?(parsing text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.utf8.count), part.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  part.utf8.count == 1 || part.utf8.first != 0x30,
                  let octet = UInt8(part) else { return nil }
            value = value << 8 | UInt32(octet)
        }
        self.value = value
    }

    /// The MMDS address when none is configured.
    public static let defaultMMDS = IPv4Address(169, 254, 169, 254)

    /// A link-local address MMDS may use: 169.254.1.0 to 169.254.254.255
    /// (RFC 3927 reserves the first and last /24 of 169.254.0.0/16).
    public var isUsableLinkLocal: Bool {
        value >> 16 == 0xA9FE && (1...254).contains((value >> 8) & 0xFF)
    }

    /// The four octets, most significant first (network order).
    public var octets: [UInt8] {
        [UInt8(truncatingIfNeeded: value >> 24), UInt8(truncatingIfNeeded: value >> 16),
         UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)]
    }

    public var description: String { octets.map { String($0) }.joined(separator: ".") }
}
