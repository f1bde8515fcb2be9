/// An Ethernet MAC address: six octets, written `52:54:00:12:34:56`.
public struct MACAddress: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// Always six octets.
    public let octets: [UInt8]

    /// Parses six hex octets separated by ':' (or '-'). Refuses multicast
    /// (and broadcast) and all-zero addresses: a NIC needs a unicast one.
    public init(parsing text: String) throws(VirtioNetError) {
        let parts = text.split(separator: text.contains("-") ? "-" : ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else {
            throw .invalidMACAddress(text, reason: "expected six hex octets such as 52:54:00:12:34:56")
        }
        var octets: [UInt8] = []
        for part in parts {
            guard part.count == 2, let octet = UInt8(part, radix: 16) else {
                throw .invalidMACAddress(text, reason: "'\(part)' is not a two-digit hex octet (expected e.g. 52:54:00:12:34:56)")
            }
            octets.append(octet)
        }
        let address = MACAddress(unchecked: octets)
        guard !address.isMulticast else {
            throw .invalidMACAddress(text, reason: "it is a multicast address (the first octet is odd); use a unicast one such as 52:54:00:12:34:56")
        }
        guard octets.contains(where: { $0 != 0 }) else {
            throw .invalidMACAddress(text, reason: "all zeros is not an address")
        }
        self = address
    }

    init(unchecked octets: [UInt8]) {
        self.octets = octets
    }

    /// A stable, locally administered unicast address derived from `seed`
    /// (e.g. the interface's id and tap), so a guest keeps its MAC across
    /// boots: 02:xx:xx:xx:xx:xx with the rest from an FNV-1a hash.
    public static func derived(from seed: String) -> MACAddress {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in seed.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        var octets: [UInt8] = [0x02]
        for shift in stride(from: 0, to: 40, by: 8) { octets.append(UInt8(truncatingIfNeeded: hash >> UInt64(shift))) }
        return MACAddress(unchecked: octets)
    }

    /// The I/G bit: group (multicast/broadcast) rather than individual.
    public var isMulticast: Bool { octets[0] & 1 != 0 }
    /// The U/L bit: not a vendor-assigned address.
    public var isLocallyAdministered: Bool { octets[0] & 2 != 0 }

    public var description: String {
        octets.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }
}
