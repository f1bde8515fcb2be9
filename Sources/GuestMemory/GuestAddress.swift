/// A guest physical address. Arithmetic on it is checked: an address derived
/// from guest input can never wrap around silently.
public struct GuestAddress: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    /// The address `offset` bytes further on, or nil if that wraps past 2^64.
    public func adding(_ offset: UInt64) -> GuestAddress? {
        let (sum, overflow) = rawValue.addingReportingOverflow(offset)
        return overflow ? nil : GuestAddress(sum)
    }

    /// Offset for VMM-chosen constants that are known not to overflow
    /// (layout arithmetic); never use with guest-derived values.
    public static func + (lhs: GuestAddress, rhs: UInt64) -> GuestAddress {
        GuestAddress(lhs.rawValue + rhs)
    }

    public static func < (lhs: GuestAddress, rhs: GuestAddress) -> Bool { lhs.rawValue < rhs.rawValue }

    /// The address rounded up to a power-of-two `alignment`; nil on overflow
    /// or when `alignment` is not a power of two (it may come from a file).
    public func alignedUp(to alignment: UInt64) -> GuestAddress? {
        guard alignment.nonzeroBitCount == 1 else { return nil }
        guard let bumped = adding(alignment - 1) else { return nil }
        return GuestAddress(bumped.rawValue & ~(alignment - 1))
    }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}
