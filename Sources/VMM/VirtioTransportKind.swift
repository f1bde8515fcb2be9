import ArchX86

/// How the guest reaches its virtio devices.
public enum VirtioTransportKind: String, Equatable, Sendable, CaseIterable {
    /// virtio-pci on PCI bus 0: a host bridge, ECAM and 0xCF8, MSI-X.
    case pci
    /// virtio-mmio pages announced on the kernel command line, one interrupt
    /// line per device, no PCI at all (Firecracker's default).
    case mmio

    /// How many devices virtio-mmio takes: one interrupt line each.
    public static let maximumMMIODevices = Layout.virtioMMIOInterrupts.count
}
