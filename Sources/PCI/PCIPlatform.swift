import Devices
import HostSystem
import KVM

/// What a PCI function needs from the VMM to decode its BARs: a place on the
/// MMIO bus, and ioeventfds so that doorbell writes stay in the kernel. KVM
/// and the VM's bus in the VMM; a plain bus in tests.
public protocol PCIPlatform: Sendable {
    /// Puts `device` on the MMIO bus at [base, base + size); false when the
    /// range overlaps something else (the BAR then decodes nothing).
    func mapBAR(_ device: any BusDevice, base: UInt64, size: UInt64) -> Bool
    func unmapBAR(_ device: any BusDevice, base: UInt64)
    /// Makes a guest write of `length` bytes at `address` signal `eventFD`
    /// without a VM exit to user space.
    func registerNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32) throws(PCIError)
    func unregisterNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32)
}

public final class KVMPCIPlatform: PCIPlatform {
    let vm: VirtualMachineHandle
    /// Weak: the bus holds the functions that hold this platform, and a
    /// strong reference would keep that cycle (and the VM's memory) alive.
    weak let mmioBus: Bus?

    public init(vm: VirtualMachineHandle, mmioBus: Bus) {
        self.vm = vm
        self.mmioBus = mmioBus
    }

    public func mapBAR(_ device: any BusDevice, base: UInt64, size: UInt64) -> Bool {
        (try? mmioBus?.insert(device, base: base, length: size)) != nil
    }

    public func unmapBAR(_ device: any BusDevice, base: UInt64) {
        mmioBus?.remove(device, base: base)
    }

    public func registerNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32) throws(PCIError) {
        do {
            try vm.registerIOEventFD(eventFD, address: address, length: length, isPortIO: false)
        } catch {
            throw .host(step: "ioeventfd at 0x\(String(address, radix: 16))", message: "\(error)")
        }
    }

    public func unregisterNotifier(_ eventFD: EventFD, address: UInt64, length: UInt32) {
        try? vm.unregisterIOEventFD(eventFD, address: address, length: length, isPortIO: false)
    }
}
