#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 address as a 32-bit number (host order), parsed strictly from
/// dotted quads: four decimal parts 0 to 255, no leading zeros (which some
/// parsers read as octal).
public struct IPv4: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let value: UInt32
    public init(_ value: UInt32) { self.value = value }

    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), part.allSatisfy(\.isNumber),
                  part == "0" || part.first != "0", let byte = UInt8(part) else { return nil }
            value = value << 8 | UInt32(byte)
        }
        self.value = value
    }

    public var description: String { "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)" }
    public static func < (lhs: IPv4, rhs: IPv4) -> Bool { lhs.value < rhs.value }
}

/// An IPv4 network in CIDR form (`192.168.122.0/24`).
public struct IPv4Subnet: Hashable, Sendable, CustomStringConvertible {
    public let network: IPv4
    public let prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPv4(String(parts[0])), parts[1].allSatisfy(\.isNumber),
              parts[1].count <= 2, let prefix = Int(parts[1]), (0...32).contains(prefix) else { return nil }
        self.init(network: address, prefix: prefix)
    }

    public init(network: IPv4, prefix: Int) {
        self.prefix = prefix
        self.network = IPv4(network.value & Self.mask(prefix))
    }

    static func mask(_ prefix: Int) -> UInt32 { prefix == 0 ? 0 : UInt32.max << UInt32(32 - prefix) }

    public var mask: IPv4 { IPv4(Self.mask(prefix)) }
    public var broadcast: IPv4 { IPv4(network.value | ~Self.mask(prefix)) }
    public var firstHost: IPv4 { IPv4(network.value + 1) }
    public var lastHost: IPv4 { IPv4(broadcast.value - 1) }
    public var description: String { "\(network)/\(prefix)" }

    public func contains(_ address: IPv4) -> Bool { address.value & Self.mask(prefix) == network.value }
    /// Whether `address` may be given to a host: inside, not the network or broadcast address.
    public func isHost(_ address: IPv4) -> Bool { contains(address) && address != network && address != broadcast }
    public func overlaps(_ other: IPv4Subnet) -> Bool {
        let shorter = min(prefix, other.prefix)
        return network.value & Self.mask(shorter) == other.network.value & Self.mask(shorter)
    }
}

/// An IPv6 /64 (the prefix SLAAC and router adverts need), parsed by inet_pton.
public struct IPv6Subnet: Hashable, Sendable, CustomStringConvertible {
    /// The first 8 bytes: the /64 prefix.
    public let prefixBytes: [UInt8]

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[1] == "64" else { return nil }
        var address = in6_addr()
        guard inet_pton(AF_INET6, String(parts[0]), &address) == 1 else { return nil }
        // SAFETY: in6_addr is 16 plain bytes.
        let bytes = withUnsafeBytes(of: &address) { Array($0) }
        guard bytes[8...].allSatisfy({ $0 == 0 }) else { return nil }
        prefixBytes = Array(bytes[..<8])
    }

    /// The prefix's address with `host` as the last 16 bits (::1 is the gateway).
    public func address(host: UInt16) -> String { prefixText + "::" + String(host, radix: 16) }
    public var description: String { prefixText + "::/64" }
    var prefixText: String {
        stride(from: 0, to: 8, by: 2).map { String(UInt16(prefixBytes[$0]) << 8 | UInt16(prefixBytes[$0 + 1]), radix: 16) }.joined(separator: ":")
    }
}
