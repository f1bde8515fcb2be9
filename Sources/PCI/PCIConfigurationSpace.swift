/// Offsets and bits of the type-0 configuration header (PCI Local Bus 3.0,
/// section 6.1) that the VMM uses.
public enum PCIRegister {
    public static let vendorID = 0x00
    public static let deviceID = 0x02
    public static let command = 0x04
    public static let status = 0x06
    public static let revisionID = 0x08
    public static let classCode = 0x09
    public static let cacheLineSize = 0x0C
    public static let headerType = 0x0E
    public static let bar0 = 0x10
    public static let subsystemVendorID = 0x2C
    public static let subsystemID = 0x2E
    public static let expansionROM = 0x30
    public static let capabilitiesPointer = 0x34
    public static let interruptLine = 0x3C
    public static let interruptPin = 0x3D
}

public enum PCICommand {
    public static let memorySpace: UInt16 = 1 << 1
    public static let busMaster: UInt16 = 1 << 2
    public static let interruptDisable: UInt16 = 1 << 10
}

public enum PCIStatus {
    public static let capabilitiesList: UInt16 = 1 << 4
}

/// Capability IDs (PCI Code and ID Assignment specification).
public enum PCICapabilityID {
    public static let vendorSpecific: UInt8 = 0x09
    public static let msix: UInt8 = 0x11
}

/// A memory BAR the device decodes: `size` bytes (a power of two, at least
/// 16), naturally aligned wherever the guest puts it.
public struct PCIBARDefinition: Sendable, Equatable {
    public var size: UInt64
    /// A 64-bit BAR takes two BAR registers (`index` and `index + 1`).
    public var is64Bit: Bool
    public var prefetchable: Bool

    public init(size: UInt64, is64Bit: Bool = false, prefetchable: Bool = false) {
        self.size = size
        self.is64Bit = is64Bit
        self.prefetchable = prefetchable
    }

    /// The low bits of the BAR register: memory space, type, prefetchable.
    var flags: UInt32 { (is64Bit ? 0b100 : 0) | (prefetchable ? 0b1000 : 0) }
}

public enum PCIConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidBAR(index: Int, reason: String)
    case capabilitySpaceFull(id: UInt8, length: Int)

    public var description: String {
        switch self {
        case let .invalidBAR(index, reason): "BAR \(index): \(reason)"
        case let .capabilitySpaceFull(id, length): "no room for capability 0x\(String(id, radix: 16)) (\(length) bytes) in configuration space"
        }
    }
}

/// The 256-byte configuration space of one type-0 PCI function, as bytes
/// with a mask of the bits the guest may change. BAR sizing falls out of the
/// mask: the address bits below the BAR's size are read-only zero, so writing
/// all-ones reads back `~(size - 1) | flags`. Accesses of any size at any
/// offset work byte by byte; the extended space (256-4095, reachable through
/// ECAM) reads as zero and ignores writes: no extended capabilities.
public struct PCIConfigurationSpace: Sendable, Equatable {
    public static let size = 256
    /// The configuration space of one function as ECAM addresses it.
    public static let extendedSize = 4096
    /// Capabilities live between the standard header and the end of the space.
    static let firstCapabilityOffset = 0x40

    private(set) var bytes: [UInt8]
    private(set) var writableMask: [UInt8]
    public private(set) var bars: [PCIBARDefinition?] = Array(repeating: nil, count: 6)
    /// The offset of each capability added, in list order.
    public private(set) var capabilityOffsets: [Int] = []
    private var nextCapabilityOffset = firstCapabilityOffset

    /// A type-0 header. `classCode` is the 24-bit base class, subclass and
    /// programming interface; `interruptPin` is 1 for INTA#, 0 for none.
    public init(vendorID: UInt16, deviceID: UInt16, classCode: UInt32, revisionID: UInt8 = 0,
                subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0, interruptPin: UInt8 = 0) {
        bytes = Array(repeating: 0, count: Self.size)
        writableMask = Array(repeating: 0, count: Self.size)
        setValue(UInt32(vendorID), offset: PCIRegister.vendorID, size: 2)
        setValue(UInt32(deviceID), offset: PCIRegister.deviceID, size: 2)
        setValue(UInt32(revisionID), offset: PCIRegister.revisionID, size: 1)
        setValue(classCode & 0xFF_FFFF, offset: PCIRegister.classCode, size: 3)
        setValue(UInt32(subsystemVendorID), offset: PCIRegister.subsystemVendorID, size: 2)
        setValue(UInt32(subsystemID), offset: PCIRegister.subsystemID, size: 2)
        setValue(UInt32(interruptPin), offset: PCIRegister.interruptPin, size: 1)
        // Memory space, bus master and INTx disable: no I/O BARs, no error reporting.
        let commandMask = PCICommand.memorySpace | PCICommand.busMaster | (interruptPin != 0 ? PCICommand.interruptDisable : 0)
        setMask(UInt32(commandMask), offset: PCIRegister.command, size: 2)
        setMask(0xFF, offset: PCIRegister.cacheLineSize, size: 1)
        setMask(0xFF, offset: PCIRegister.interruptLine, size: 1)
    }

    // MARK: Building

    /// Declares memory BAR `index` and places it at `address` (which must be
    /// aligned to its size).
    public mutating func addBAR(_ index: Int, _ bar: PCIBARDefinition, address: UInt64 = 0) throws(PCIConfigurationError) {
        guard (0..<6).contains(index), !bar.is64Bit || index < 5 else {
            throw .invalidBAR(index: index, reason: "no such BAR register\(bar.is64Bit ? " pair" : "")")
        }
        guard bar.size >= 16, bar.size & (bar.size - 1) == 0, bar.is64Bit || bar.size <= 1 << 31 else {
            throw .invalidBAR(index: index, reason: "size \(bar.size) is not a power of two from 16 to \(bar.is64Bit ? "2^63" : "2 GiB")")
        }
        guard address & (bar.size - 1) == 0, bar.is64Bit || address <= UInt64(UInt32.max) else {
            throw .invalidBAR(index: index, reason: "address 0x\(String(address, radix: 16)) is not aligned to its size or out of reach")
        }
        guard bars[index] == nil, !bar.is64Bit || bars[index + 1] == nil, !isUpperHalfOf64BitBAR(index) else {
            throw .invalidBAR(index: index, reason: "already in use")
        }
        bars[index] = bar
        let register = PCIRegister.bar0 + 4 * index
        let addressMask = ~(bar.size - 1)
        setValue(UInt32(truncatingIfNeeded: address) | bar.flags, offset: register, size: 4)
        setMask(UInt32(truncatingIfNeeded: addressMask) & 0xFFFF_FFF0, offset: register, size: 4)
        if bar.is64Bit {
            setValue(UInt32(truncatingIfNeeded: address >> 32), offset: register + 4, size: 4)
            setMask(UInt32(truncatingIfNeeded: addressMask >> 32), offset: register + 4, size: 4)
        }
    }

    private func isUpperHalfOf64BitBAR(_ index: Int) -> Bool {
        index > 0 && bars[index - 1]?.is64Bit == true
    }

    /// Appends a capability (`body` after its ID and next-pointer bytes, with
    /// `writableMask` over the body) to the list; returns its offset.
    @discardableResult
    public mutating func addCapability(id: UInt8, body: [UInt8], writableMask bodyMask: [UInt8] = []) throws(PCIConfigurationError) -> Int {
        let length = (2 + body.count + 3) & ~3
        let offset = nextCapabilityOffset
        guard offset + length <= Self.size else { throw .capabilitySpaceFull(id: id, length: 2 + body.count) }
        bytes[offset] = id
        bytes[offset + 1] = 0
        for (index, byte) in body.enumerated() { bytes[offset + 2 + index] = byte }
        for (index, byte) in bodyMask.prefix(body.count).enumerated() { writableMask[offset + 2 + index] = byte }
        if let previous = capabilityOffsets.last {
            bytes[previous + 1] = UInt8(offset)
        } else {
            bytes[PCIRegister.capabilitiesPointer] = UInt8(offset)
            setValue(UInt32(value(offset: PCIRegister.status, size: 2)) | UInt32(PCIStatus.capabilitiesList), offset: PCIRegister.status, size: 2)
        }
        capabilityOffsets.append(offset)
        nextCapabilityOffset = offset + length
        return offset
    }

    // MARK: Guest access

    /// Copies the bytes at `offset` (any offset below `extendedSize`; beyond
    /// the 256-byte space they read as zero).
    public func read(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for index in 0..<data.count {
            let position = offset &+ index
            data[index] = (position >= 0 && position < Self.size) ? bytes[position] : 0
        }
    }

    /// Applies a guest write: only the writable bits of each byte change.
    public mutating func write(offset: Int, from data: UnsafeRawBufferPointer) {
        for index in 0..<data.count {
            let position = offset &+ index
            guard position >= 0 && position < Self.size else { continue }
            let mask = writableMask[position]
            bytes[position] = (bytes[position] & ~mask) | (data[index] & mask)
        }
    }

    // MARK: Device access

    /// Little-endian value of `size` (1-4) bytes at `offset`.
    public func value(offset: Int, size: Int) -> UInt32 {
        var result: UInt32 = 0
        for index in 0..<size where offset + index < Self.size {
            result |= UInt32(bytes[offset + index]) << (8 * UInt32(index))
        }
        return result
    }

    /// Sets bytes the guest cannot (read-only fields the device updates).
    public mutating func setValue(_ value: UInt32, offset: Int, size: Int) {
        for index in 0..<size where offset + index < Self.size {
            bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index)))
        }
    }

    /// Makes the bits set in `mask` writable by the guest (and the others read-only).
    public mutating func setMask(_ mask: UInt32, offset: Int, size: Int) {
        for index in 0..<size where offset + index < Self.size {
            writableMask[offset + index] = UInt8(truncatingIfNeeded: mask >> (8 * UInt32(index)))
        }
    }

    public var command: UInt16 { UInt16(value(offset: PCIRegister.command, size: 2)) }
    public var memoryDecodingEnabled: Bool { command & PCICommand.memorySpace != 0 }
    public var busMasterEnabled: Bool { command & PCICommand.busMaster != 0 }
    public var interruptDisabled: Bool { command & PCICommand.interruptDisable != 0 }

    /// The address BAR `index` holds now (the guest may have written any
    /// address, or all-ones while sizing); nil for an absent BAR.
    public func barAddress(_ index: Int) -> UInt64? {
        guard (0..<6).contains(index), let bar = bars[index] else { return nil }
        let register = PCIRegister.bar0 + 4 * index
        var address = UInt64(value(offset: register, size: 4) & 0xFFFF_FFF0)
        if bar.is64Bit { address |= UInt64(value(offset: register + 4, size: 4)) << 32 }
        return address
    }

    /// Where BAR `index` decodes now: nil when memory decoding is off, the BAR
    /// is absent, or it sits at 0 or wraps the address space.
    public func decodedBAR(_ index: Int) -> (base: UInt64, size: UInt64)? {
        guard memoryDecodingEnabled, let bar = bars[index], let base = barAddress(index), base != 0 else { return nil }
        let (end, overflow) = base.addingReportingOverflow(bar.size)
        guard !overflow, end != 0 else { return nil }
        return (base, bar.size)
    }
}

extension PCIConfigurationSpace {
    /// The 256 bytes as the guest left them (command, BARs as programmed,
    /// interrupt line, capability fields), for a snapshot.
    public var savedBytes: [UInt8] { bytes }

    /// Takes back `savedBytes` from a space built the same way. Only bits
    /// the guest can write may differ from this space's: the offset of the
    /// first byte that differs elsewhere is returned and nothing changes.
    public mutating func restore(savedBytes saved: [UInt8]) -> Int? {
        guard saved.count == Self.size else { return min(saved.count, Self.size) }
        for position in 0..<Self.size where (saved[position] ^ bytes[position]) & ~writableMask[position] != 0 {
            return position
        }
        bytes = saved
        return nil
    }
}
