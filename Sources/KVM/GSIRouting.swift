import CKVM
import HostSystem

/// One entry of KVM's GSI routing table: where an interrupt raised on `gsi`
/// (by KVM_IRQ_LINE or an irqfd) goes.
public enum GSIRoute: Sendable, Equatable {
    /// An in-kernel interrupt controller input.
    case irqchip(gsi: UInt32, chip: InterruptChip, pin: UInt32)
    /// A message-signalled interrupt: the address/data pair a PCI function
    /// would write (MSI or an MSI-X table entry).
    case msi(gsi: UInt32, address: UInt64, data: UInt32)

    public enum InterruptChip: UInt32, Sendable {
        case picMaster = 0, picSlave = 1, ioAPIC = 2
    }

    public var gsi: UInt32 {
        switch self {
        case let .irqchip(gsi, _, _), let .msi(gsi, _, _): gsi
        }
    }

    /// The routes KVM installs by default with KVM_CREATE_IRQCHIP: GSIs 0-15
    /// to the PIC and the IO-APIC, 16-23 to the IO-APIC. KVM_SET_GSI_ROUTING
    /// replaces the whole table, so every table the VMM sets starts with these.
    public static let defaultIRQChipRoutes: [GSIRoute] = (0..<24).flatMap { (gsi: UInt32) -> [GSIRoute] in
        let ioAPIC = GSIRoute.irqchip(gsi: gsi, chip: .ioAPIC, pin: gsi)
        guard gsi < 16 else { return [ioAPIC] }
        return [.irqchip(gsi: gsi, chip: gsi < 8 ? .picMaster : .picSlave, pin: gsi % 8), ioAPIC]
    }

    var kernelEntry: kvm_irq_routing_entry {
        var entry = kvm_irq_routing_entry()
        switch self {
        case let .irqchip(gsi, chip, pin):
            entry.gsi = gsi
            entry.type = UInt32(KVM_IRQ_ROUTING_IRQCHIP)
            entry.u.irqchip.irqchip = chip.rawValue
            entry.u.irqchip.pin = pin
        case let .msi(gsi, address, data):
            entry.gsi = gsi
            entry.type = UInt32(KVM_IRQ_ROUTING_MSI)
            entry.u.msi.address_lo = UInt32(truncatingIfNeeded: address)
            entry.u.msi.address_hi = UInt32(truncatingIfNeeded: address >> 32)
            entry.u.msi.data = data
        }
        return entry
    }
}

extension VirtualMachineHandle {
    /// The most routes KVM accepts in one table (KVM_MAX_IRQ_ROUTES); more fail with EINVAL.
    public static let maximumGSIRoutes = 4096

    /// Replaces KVM's GSI routing table with `routes` (KVM_SET_GSI_ROUTING).
    /// Include `GSIRoute.defaultIRQChipRoutes` to keep the legacy lines working.
    public func setGSIRouting(_ routes: [GSIRoute]) throws(KVMError) {
        let header = Int(ckvm_irq_routing_header_size())
        let stride = MemoryLayout<kvm_irq_routing_entry>.stride
        let size = header + routes.count * stride
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buffer.deallocate() }
        // SAFETY: the buffer holds the header and `routes.count` entries; each
        // store writes inside it, and the kernel reads exactly that much.
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        buffer.storeBytes(of: UInt32(routes.count), toByteOffset: 0, as: UInt32.self)
        for (index, route) in routes.enumerated() {
            buffer.storeBytes(of: route.kernelEntry, toByteOffset: header + index * stride, as: kvm_irq_routing_entry.self)
        }
        try descriptor.kvmIoctl("KVM_SET_GSI_ROUTING (\(routes.count) routes)", CKVM_SET_GSI_ROUTING, buffer: buffer)
    }

    /// Stops routing writes to `eventFD` to `gsi`.
    public func unregisterIRQFD(_ eventFD: EventFD, gsi: UInt32) throws(KVMError) {
        var request = kvm_irqfd()
        request.fd = UInt32(bitPattern: eventFD.descriptor.rawValue)
        request.gsi = gsi
        request.flags = CKVM_IRQFD_FLAG_DEASSIGN
        try descriptor.kvmIoctl("KVM_IRQFD deassign gsi \(gsi)", CKVM_IRQFD, pointer: &request)
    }

    /// Removes an ioeventfd registered with `registerIOEventFD` (same
    /// address, length, kind and datamatch).
    public func unregisterIOEventFD(_ eventFD: EventFD, address: UInt64, length: UInt32, isPortIO: Bool,
                                    datamatch: UInt64? = nil) throws(KVMError) {
        var request = Self.ioEventFDRequest(eventFD, address: address, length: length, isPortIO: isPortIO, datamatch: datamatch)
        request.flags |= CKVM_IOEVENTFD_FLAG_DEASSIGN
        try descriptor.kvmIoctl("KVM_IOEVENTFD deassign at 0x\(String(address, radix: 16))", CKVM_IOEVENTFD, pointer: &request)
    }
}
