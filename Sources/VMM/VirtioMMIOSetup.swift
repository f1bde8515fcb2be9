import ACPI
import ArchX86
import Devices
import GuestMemory
import KVM
import Virtio
import VirtioMMIO

/// The VM's virtio-mmio side: one register page per device from
/// `Layout.virtioMMIOStart`, each with its own GSI (an irqfd) and
/// ioeventfds on its QueueNotify register. No PCI host bridge, no 0xCF8
/// ports, no ECAM or MCFG. The guest learns of each device from
/// `virtio_mmio.device=4K@0xADDR:GSI` on its kernel command line (as
/// Firecracker announces them; what the test kit and kernels without ACPI
/// read) and from the DSDT (what Linux with ACPI uses), as Firecracker does.
struct MMIOSetup {
    let transports: [VirtioMMIOTransport]
    /// Each transport's GSI, in the same order.
    let interrupts: [UInt32]
    weak let mmioBus: Bus?

    init(vm: VirtualMachineHandle, memory: GuestMemory, mmioBus: Bus, devices: [any VirtioDevice]) throws(VMMError) {
        let limit = VirtioTransportKind.maximumMMIODevices
        guard devices.count <= limit else {
            throw .invalidConfiguration(field: "devices", value: "\(devices.count) virtio devices",
                                        expected: "at most \(limit) over virtio-mmio (one interrupt line each; --transport pci takes more)")
        }
        let platform = KVMVirtioMMIOPlatform(vm: vm)
        var transports: [VirtioMMIOTransport] = []
        var interrupts: [UInt32] = []
        for (index, device) in devices.enumerated() {
            guard let slot = Layout.virtioMMIODevice(index) else { break }
            let line: EventFDInterruptLine
            do {
                line = try EventFDInterruptLine(vm: vm, gsi: slot.gsi)
            } catch {
                throw .kvm(error)
            }
            let transport = VirtioMMIOTransport(device: device, base: slot.start.rawValue, memory: memory,
                                                platform: platform, interrupt: line)
            do {
                try mmioBus.insert(transport, base: slot.start.rawValue, length: Layout.virtioMMIOSize)
            } catch {
                throw .bus(error)
            }
            transports.append(transport)
            interrupts.append(slot.gsi)
        }
        self.transports = transports
        self.interrupts = interrupts
        self.mmioBus = mmioBus
    }

    /// `virtio_mmio.device=4K@0xADDR:GSI` for each device, in device order
    /// (Linux numbers them, so the first disk is vda).
    var commandLineParameters: [String] {
        zip(transports, interrupts).map { transport, gsi in
            "virtio_mmio.device=\(Layout.virtioMMIOSize >> 10)K@0x\(String(transport.base, radix: 16)):\(gsi)"
        }
    }

    /// The same devices for the DSDT (`ACPIVirtioMMIO`): how a Linux guest
    /// with ACPI finds them with working interrupts (its IRQ numbers are
    /// not GSIs). Linux probes these first; the command-line copy of each
    /// then finds its page taken and is dropped.
    var acpiDevices: [ACPIVirtioMMIO.Device] {
        zip(transports, interrupts).map { transport, gsi in
            ACPIVirtioMMIO.Device(base: UInt32(truncatingIfNeeded: transport.base), length: UInt32(Layout.virtioMMIOSize), gsi: gsi)
        }
    }

    /// Stops every device (worker threads joined) and takes the pages off the bus.
    func shutdown() {
        for transport in transports {
            transport.shutdown()
            mmioBus?.remove(transport, base: transport.base)
        }
    }
}
