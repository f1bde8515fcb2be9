import Synchronization

/// A device on the port-I/O or MMIO bus. `offset` is relative to the base the
/// device was inserted at; `data` is the access (1, 2, 4 or 8 bytes).
/// Implementations must tolerate any offset and size: the guest picks both.
public protocol BusDevice: AnyObject, Sendable {
    func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt64, from data: UnsafeRawBufferPointer)
}

public enum BusError: Error, Equatable, Sendable, CustomStringConvertible {
    case overlap(base: UInt64, length: UInt64, existingBase: UInt64)
    case emptyRange(base: UInt64)

    public var description: String {
        switch self {
        case let .overlap(base, length, existingBase):
            "bus range 0x\(String(base, radix: 16))+\(length) overlaps the device at 0x\(String(existingBase, radix: 16))"
        case let .emptyRange(base):
            "bus range at 0x\(String(base, radix: 16)) is empty"
        }
    }
}

/// An address space (port I/O or MMIO) mapping ranges to devices. Ranges are
/// added before the vCPUs start (PCI BARs also move when the guest
/// reprograms them, which is rare), so the lock around the sorted table is
/// uncontended on the exit path; the device call happens outside it.
public final class Bus: Sendable {
    struct Entry: Sendable {
        let base: UInt64
        let length: UInt64
        let device: any BusDevice
    }

    private let entries: Mutex<[Entry]> = Mutex([])

    public init() {}

    /// Adds `device` at [base, base+length).
    public func insert(_ device: any BusDevice, base: UInt64, length: UInt64) throws(BusError) {
        guard length > 0 else { throw .emptyRange(base: base) }
        try entries.withLock { (entries) throws(BusError) in
            for entry in entries where base < entry.base &+ entry.length && entry.base < base &+ length {
                throw .overlap(base: base, length: length, existingBase: entry.base)
            }
            entries.append(Entry(base: base, length: length, device: device))
            entries.sort { $0.base < $1.base }
        }
    }

    /// Removes `device` from the range starting at `base` (a PCI BAR the guest
    /// moved or disabled); false if it was not there.
    @discardableResult
    public func remove(_ device: any BusDevice, base: UInt64) -> Bool {
        entries.withLock { entries in
            guard let index = entries.firstIndex(where: { $0.base == base && $0.device === device }) else { return false }
            entries.remove(at: index)
            return true
        }
    }

    /// The device covering `address` and the offset into it.
    func resolve(_ address: UInt64) -> (any BusDevice, UInt64)? {
        entries.withLock { entries in
            // Binary search for the last entry whose base ≤ address.
            var low = 0, high = entries.count
            while low < high {
                let middle = (low + high) / 2
                if entries[middle].base <= address { low = middle + 1 } else { high = middle }
            }
            guard low > 0 else { return nil }
            let entry = entries[low - 1]
            let offset = address - entry.base
            return offset < entry.length ? (entry.device, offset) : nil
        }
    }

    /// Dispatches a read; false if nothing is mapped there.
    @discardableResult
    public func read(_ address: UInt64, into data: UnsafeMutableRawBufferPointer) -> Bool {
        guard let (device, offset) = resolve(address) else { return false }
        device.read(offset: offset, into: data)
        return true
    }

    /// Dispatches a write; false if nothing is mapped there.
    @discardableResult
    public func write(_ address: UInt64, from data: UnsafeRawBufferPointer) -> Bool {
        guard let (device, offset) = resolve(address) else { return false }
        device.write(offset: offset, from: data)
        return true
    }
}

extension UnsafeRawBufferPointer {
    /// The access value, little-endian, zero-extended (the first 8 bytes at most).
    public var littleEndianValue: UInt64 {
        var value: UInt64 = 0
        for (position, byte) in prefix(8).enumerated() { value |= UInt64(byte) << (8 * UInt64(position)) }
        return value
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Fills the access with `value`, little-endian, truncated to its size.
    public func storeLittleEndian(_ value: UInt64) {
        for position in 0..<count { self[position] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(Swift.min(position, 7)))) }
    }
}
