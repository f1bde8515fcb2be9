import ACPI
import ArchX86
import Devices
import GuestMemory
import KVM
import PCI
import Virtio
import VirtioBlock
import VirtioPCI
import VirtioConsole
import VirtioRNG

/// Turns the configuration into the VM's virtio devices, in device order
/// (PCI slot 00:01.0 on, or the virtio-mmio pages in order). Each device
/// kind adds itself here, in one place, whatever the transport.
public enum VirtioDeviceFactory {
    /// `consoleOutput` is where a virtio-console writes (the same sink as COM1).
    public static func makeDevices(_ configuration: VMConfiguration, consoleOutput: any SerialOutput) throws(VMMError) -> [any VirtioDevice] {
        var devices: [any VirtioDevice] = []
        if configuration.console == .virtio {
            do {
                devices.append(try ConsoleDevice(output: consoleOutput))
            } catch {
                switch error {
                case let .eventFD(cause): throw .host(step: "creating the virtio-console", cause: cause)
                }
            }
        }
        if configuration.entropyDevice {
            devices.append(VirtioRNG(rateLimiter: configuration.entropyRateLimiter))
        }
        // virtio-blk: every image opened and checked here, before the guest starts.
        var images: [DiskImage] = []
        do {
            for disk in configuration.disks {
                images.append(try DiskImage(path: disk.path, readOnly: disk.readOnly, directIO: disk.directIO, format: disk.format, lockNow: false))
            }
            try DiskImage.checkDistinct(images)
            // Locked only now, so that one image attached twice by this VM reads as such, not as another process's lock.
            for image in images { try image.acquireLock() }
            for (disk, image) in zip(configuration.disks, images) {
                devices.append(try VirtioBlockDevice(disk: image, name: disk.id, serial: disk.fixedSerial, rateLimiter: disk.rateLimiter))
            }
        } catch {
            throw .disk(error)
        }
        // Opens each tap now: one that cannot be opened stops the VMM before the guest starts.
        for interface in configuration.networkInterfaces {
            devices.append(try interface.makeDevice(metadata: configuration.metadataService))
        }
        // virtio-vsock: its Unix socket is bound now, before the vCPUs start.
        if let vsock = configuration.vsock {
            devices.append(try vsock.makeDevice())
        }
        return devices
    }
}

/// The VM's PCI side: bus 0 with its host bridge, both configuration
/// mechanisms, the BAR windows, and one virtio-pci function per device.
struct PCISetup {
    let rootBus: PCIRootBus
    let routing: KVMInterruptRouting
    let mmio32: PCIBARAllocator
    let mmio64: PCIBARAllocator
    let transports: [VirtioPCITransport]
    /// What the MCFG and the DSDT's PCI0 announce.
    let acpi: PCIECAMConfiguration

    init(vm: VirtualMachineHandle, memory: GuestMemory, memorySize: UInt64, portBus: Bus, mmioBus: Bus,
         devices: [any VirtioDevice]) throws(VMMError) {
        rootBus = PCIRootBus()
        routing = KVMInterruptRouting(vm: vm)
        mmio32 = PCIBARAllocator(name: "32-bit", start: Layout.pciMMIO32Start.rawValue, size: Layout.pciMMIO32Size)
        let mmio64Start = Layout.pciMMIO64Start(memorySize: memorySize).rawValue
        mmio64 = PCIBARAllocator(name: "64-bit", start: mmio64Start, size: Layout.pciMMIO64Size)
        let platform = KVMPCIPlatform(vm: vm, mmioBus: mmioBus)
        var transports: [VirtioPCITransport] = []
        var routes: [PCIInterruptRoute] = []
        do {
            try rootBus.attach(PCIHostBridge(), at: PCIAddress(device: 0)!)
            try portBus.insert(PCIConfigurationPorts(bus: rootBus), base: PCIConfigurationPorts.basePort, length: PCIConfigurationPorts.length)
            try mmioBus.insert(PCIECAM(bus: rootBus), base: Layout.pciECAMStart.rawValue, length: Layout.pciECAMSize)
            for device in devices {
                let address = try rootBus.freeSlot()
                let vectors = try routing.allocateVectors(count: device.queueMaximumSizes.count + 1)
                let gsi = PCIInterruptRouting.gsi(device: address.device, pin: 0)
                let transport = try VirtioPCITransport(
                    device: device, address: address, barAddress: try mmio32.allocate(size: VirtioPCILayout.barSize),
                    memory: memory, platform: platform, msixVectors: vectors, router: routing,
                    intx: routing.intxLine(gsi: gsi))
                try rootBus.attach(transport, at: address)
                transports.append(transport)
                for pin in UInt8(0)..<4 {
                    routes.append(PCIInterruptRoute(device: address.device, pin: pin,
                                                    gsi: PCIInterruptRouting.gsi(device: address.device, pin: pin)))
                }
            }
        } catch let error as PCIError {
            throw .pci(error)
        } catch let error as BusError {
            throw .bus(error)
        } catch {
            throw .pci(.host(step: "building the PCI bus", message: "\(error)"))
        }
        self.transports = transports
        acpi = PCIECAMConfiguration(
            base: Layout.pciECAMStart.rawValue, startBus: 0, endBus: UInt8((Layout.pciECAMSize >> 20) - 1),
            mmio32Base: UInt32(Layout.pciMMIO32Start.rawValue), mmio32Size: UInt32(Layout.pciMMIO32Size),
            mmio64Base: mmio64Start, mmio64Size: Layout.pciMMIO64Size, interruptRoutes: routes)
    }

    /// Stops every device (worker threads joined).
    func shutdown() {
        for transport in transports { transport.shutdown() }
    }
}
