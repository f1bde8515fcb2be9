import Devices
import Synchronization

/// Bus, device and function numbers of a PCI function.
public struct PCIAddress: Hashable, Sendable, CustomStringConvertible {
    public let bus: UInt8
    public let device: UInt8
    public let function: UInt8

    /// nil unless device < 32 and function < 8.
    public init?(bus: UInt8 = 0, device: UInt8, function: UInt8 = 0) {
        guard device < 32, function < 8 else { return nil }
        self.bus = bus
        self.device = device
        self.function = function
    }

    /// "00:01.0", as lspci prints it.
    public var description: String {
        func hex(_ value: UInt8, _ width: Int) -> String {
            let text = String(value, radix: 16)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(hex(bus, 2)):\(hex(device, 2)).\(function)"
    }
}

/// A function on the PCI bus: its configuration space. `offset` is below
/// 4096 (ECAM reaches the extended space); `data` is what the guest accessed
/// (any size, any alignment: implementations must tolerate both).
public protocol PCIFunction: AnyObject, Sendable {
    func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer)
    func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer)
}

public enum PCIError: Error, Equatable, Sendable, CustomStringConvertible {
    case slotInUse(PCIAddress)
    case noFreeSlot
    case windowExhausted(window: String, size: UInt64)
    case configuration(device: String, PCIConfigurationError)
    case host(step: String, message: String)

    public var description: String {
        switch self {
        case let .slotInUse(address): "PCI slot \(address) is already in use"
        case .noFreeSlot: "no free PCI slot on bus 0 (31 devices at most)"
        case let .windowExhausted(window, size): "no room for a \(size)-byte BAR in the \(window) MMIO window"
        case let .configuration(device, error): "\(device): \(error)"
        case let .host(step, message): "\(step): \(message)"
        }
    }
}

/// Bus 0 of the single PCI segment: the functions by address. Functions are
/// attached before the vCPUs start; lookups on the exit path take an
/// uncontended lock.
public final class PCIRootBus: Sendable {
    private let functions = Mutex<[PCIAddress: any PCIFunction]>([:])

    public init() {}

    public func attach(_ function: any PCIFunction, at address: PCIAddress) throws(PCIError) {
        try functions.withLock { (functions) throws(PCIError) in
            guard functions[address] == nil else { throw .slotInUse(address) }
            functions[address] = function
        }
    }

    /// The lowest device number from 1 up with nothing attached (0 is the host bridge).
    public func freeSlot() throws(PCIError) -> PCIAddress {
        try functions.withLock { (functions) throws(PCIError) -> PCIAddress in
            for device in UInt8(1)..<32 {
                if let address = PCIAddress(device: device), functions[address] == nil { return address }
            }
            throw .noFreeSlot
        }
    }

    public func function(at address: PCIAddress) -> (any PCIFunction)? {
        functions.withLock { $0[address] }
    }

    /// A configuration read; all-ones where no function answers (how the
    /// guest learns a slot is empty). The access is clipped to the function's
    /// 4 KiB space.
    public func readConfiguration(_ address: PCIAddress, offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0xFF }
        guard offset >= 0, offset < PCIConfigurationSpace.extendedSize, let function = function(at: address) else { return }
        let count = min(data.count, PCIConfigurationSpace.extendedSize - offset)
        function.readConfiguration(offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: data[0..<count]))
    }

    public func writeConfiguration(_ address: PCIAddress, offset: Int, from data: UnsafeRawBufferPointer) {
        guard offset >= 0, offset < PCIConfigurationSpace.extendedSize, let function = function(at: address) else { return }
        let count = min(data.count, PCIConfigurationSpace.extendedSize - offset)
        function.writeConfiguration(offset: offset, from: UnsafeRawBufferPointer(rebasing: data[0..<count]))
    }
}

/// Configuration mechanism #1: the address register at port 0xCF8 (enable
/// bit 31, bus 23-16, device 15-11, function 10-8, register 7-2) and the data
/// window at 0xCFC-0xCFF. Insert at port 0xCF8 with length 8.
public final class PCIConfigurationPorts: BusDevice {
    public static let basePort: UInt64 = 0xCF8
    public static let length: UInt64 = 8
    static let enableBit: UInt32 = 1 << 31
    /// The bits of the address register that hold state; the rest read as zero.
    static let addressMask: UInt32 = enableBit | 0x00FF_FFFC

    let bus: PCIRootBus
    let addressRegister = Mutex<UInt32>(0)

    public init(bus: PCIRootBus) {
        self.bus = bus
    }

    /// The function and register the address register selects, or nil when disabled.
    private func target() -> (PCIAddress, Int)? {
        let value = addressRegister.withLock { $0 }
        guard value & Self.enableBit != 0,
              let address = PCIAddress(bus: UInt8(truncatingIfNeeded: value >> 16),
                                       device: UInt8(truncatingIfNeeded: value >> 11) & 0x1F,
                                       function: UInt8(truncatingIfNeeded: value >> 8) & 0x7)
        else { return nil }
        return (address, Int(value & 0xFC))
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        if offset == 0 && data.count == 4 {
            data.storeLittleEndian(UInt64(addressRegister.withLock { $0 }))
            return
        }
        for index in data.indices { data[index] = 0xFF }
        // Byte accesses to 0xCF8-0xCFB are not configuration cycles.
        guard offset >= 4, offset < 8, let (address, register) = target() else { return }
        let count = min(data.count, Int(8 - offset))
        bus.readConfiguration(address, offset: register + Int(offset - 4),
                              into: UnsafeMutableRawBufferPointer(rebasing: data[0..<count]))
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        if offset == 0 && data.count == 4 {
            let value = UInt32(truncatingIfNeeded: data.littleEndianValue) & Self.addressMask
            addressRegister.withLock { $0 = value }
            return
        }
        guard offset >= 4, offset < 8, let (address, register) = target() else { return }
        let count = min(data.count, Int(8 - offset))
        bus.writeConfiguration(address, offset: register + Int(offset - 4),
                               from: UnsafeRawBufferPointer(rebasing: data[0..<count]))
    }
}

/// PCI Express enhanced configuration access: bus `b`, device `d`, function
/// `f` at offset b << 20 | d << 15 | f << 12 from the base the MCFG table
/// announces. Insert at `Layout.pciECAMStart` with its size.
public final class PCIECAM: BusDevice {
    let bus: PCIRootBus

    public init(bus: PCIRootBus) {
        self.bus = bus
    }

    static func decode(_ offset: UInt64) -> (PCIAddress, Int)? {
        guard offset < 1 << 28,
              let address = PCIAddress(bus: UInt8(truncatingIfNeeded: offset >> 20),
                                       device: UInt8(truncatingIfNeeded: offset >> 15) & 0x1F,
                                       function: UInt8(truncatingIfNeeded: offset >> 12) & 0x7)
        else { return nil }
        return (address, Int(offset & 0xFFF))
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard let (address, register) = Self.decode(offset) else {
            for index in data.indices { data[index] = 0xFF }
            return
        }
        bus.readConfiguration(address, offset: register, into: data)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let (address, register) = Self.decode(offset) else { return }
        bus.writeConfiguration(address, offset: register, from: data)
    }
}

/// The host bridge at 00:00.0: a type-0 header with the host-bridge class
/// (06/00/00) and nothing else, as on QEMU's generic PCIe host (the IDs are
/// Red Hat's for that device, which Linux binds no driver to).
public final class PCIHostBridge: PCIFunction {
    public static let vendorID: UInt16 = 0x1B36
    public static let deviceID: UInt16 = 0x0008
    public static let classCode: UInt32 = 0x06_00_00

    let space = Mutex(PCIConfigurationSpace(vendorID: vendorID, deviceID: deviceID, classCode: classCode))

    public init() {}

    public func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        space.withLock { $0.read(offset: offset, into: data) }
    }

    public func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {
        space.withLock { $0.write(offset: offset, from: data) }
    }
}

/// Hands out naturally aligned BAR addresses from an MMIO window, upwards.
public final class PCIBARAllocator: Sendable {
    public let name: String
    public let start: UInt64
    public let size: UInt64
    private let next: Mutex<UInt64>

    public init(name: String, start: UInt64, size: UInt64) {
        self.name = name
        self.start = start
        self.size = size
        next = Mutex(start)
    }

    /// `size` must be a power of two; the address is aligned to it.
    public func allocate(size barSize: UInt64) throws(PCIError) -> UInt64 {
        try next.withLock { (next) throws(PCIError) -> UInt64 in
            guard barSize > 0, barSize & (barSize - 1) == 0 else { throw .windowExhausted(window: name, size: barSize) }
            let (rounded, overflow) = next.addingReportingOverflow(barSize - 1)
            let base = rounded & ~(barSize - 1)
            guard !overflow, base >= next, base - start <= size, barSize <= size - (base - start) else {
                throw .windowExhausted(window: name, size: barSize)
            }
            next = base + barSize
            return base
        }
    }
}
