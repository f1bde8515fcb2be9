// swift-tools-version: 6.0
// Swiftlet: a KVM virtualization stack in Swift. Targets follow the layers of
// the VMM, dependencies flowing one way: CKVM -> HostSystem -> SnapshotFormat
// -> KVM / GuestMemory -> Boot / ACPI / ArchX86 -> Devices -> VMM -> command-line front ends.
import PackageDescription

let package = Package(
    name: "Swiftlet",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "swiftlet-vmm", targets: ["swiftlet-vmm"]),
        .executable(name: "swiftlet", targets: ["swiftlet"]),
        .executable(name: "swiftletd", targets: ["swiftletd"]),
        .executable(name: "swiftlet-jailer", targets: ["swiftlet-jailer"]),
        .executable(name: "swiftlet-uffd-handler", targets: ["swiftlet-uffd-handler"]),
        .executable(name: "swiftlet-agent", targets: ["swiftlet-agent"]),
        // The parsers the fuzz targets in Fuzz/ exercise.
        .library(name: "SwiftletFuzzable", targets: ["HostSystem", "SnapshotFormat", "Boot", "GuestMemory", "Devices", "VMMCommand", "LeanJSON", "ControlAPI", "Virtio", "PCI", "VirtioPCI", "VirtioMMIO", "QCOW2", "VirtioBlock", "VirtioNet", "VirtioVsock", "VirtioConsole", "VirtioRNG", "VMM", "MMDS", "RateLimiter", "SwiftletClient", "UffdHandler", "AgentProtocol", "QMP"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // swiftletd and the swiftlet CLI only; never linked into swiftlet-vmm.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // <linux/kvm.h> and ioctl request numbers as Swift-visible constants.
        .target(name: "CKVM"),
        // Syscall wrapper (EINTR retry, typed errno), fds, eventfd, epoll, mmap.
        .target(name: "HostSystem", dependencies: ["CKVM"]),
        // Snapshot state: binary encoder/decoder with tagged sections, the
        // checksummed state file and the host CPU identity it records.
        .target(name: "SnapshotFormat", dependencies: ["CKVM", "HostSystem"]),
        // System / VM / vCPU handles over the KVM ioctls.
        .target(name: "KVM", dependencies: ["CKVM", "HostSystem"]),
        // GuestAddress and bounds-checked guest memory, and its snapshot memory file.
        .target(name: "GuestMemory", dependencies: ["CKVM", "HostSystem", "SnapshotFormat"]),
        // Kernel loaders (bzImage, ELF/PVH), boot parameters, command line.
        .target(name: "Boot", dependencies: ["GuestMemory"]),
        // ACPI tables as pure bytes.
        .target(name: "ACPI"),
        // x86_64 layout, GDT, page tables, CPUID, MSRs, registers.
        .target(name: "ArchX86", dependencies: ["CKVM", "KVM", "GuestMemory", "ACPI", "Boot"]),
        // Port-I/O and MMIO buses, legacy devices.
        .target(name: "Devices", dependencies: ["HostSystem", "GuestMemory", "SnapshotFormat"]),
        // VirtIO core: split virtqueues, descriptor chains, the device protocol.
        .target(name: "Virtio", dependencies: ["GuestMemory", "HostSystem", "SnapshotFormat"]),
        // PCI configuration space, host bridge, BARs, MSI-X.
        .target(name: "PCI", dependencies: ["Devices", "KVM", "HostSystem", "SnapshotFormat"]),
        // The virtio-pci modern transport (VirtIO 1.2 section 4.1).
        .target(name: "VirtioPCI", dependencies: ["PCI", "Virtio", "Devices", "KVM", "GuestMemory", "HostSystem", "SnapshotFormat"]),
        // The virtio-mmio transport (VirtIO 1.2 section 4.2, version 2).
        .target(name: "VirtioMMIO", dependencies: ["Virtio", "Devices", "KVM", "GuestMemory", "HostSystem", "SnapshotFormat"]),
        // Firecracker's token-bucket rate limiters (bandwidth and operations), woken by a timerfd.
        .target(name: "RateLimiter", dependencies: ["HostSystem"]),
        // zlib's raw inflate behind a plain C function (qcow2's compressed clusters); links libz.
        .target(name: "CZlib", linkerSettings: [.linkedLibrary("z")]),
        // The qcow2 disk format (versions 2 and 3): header, L1/L2 tables, refcounts, backing files, create.
        .target(name: "QCOW2", dependencies: ["HostSystem", "CZlib"]),
        // VirtIO devices, one target each.
        .target(name: "VirtioBlock", dependencies: ["Virtio", "GuestMemory", "HostSystem", "CKVM", "RateLimiter", "SnapshotFormat", "QCOW2"]),
        .target(name: "VirtioNet", dependencies: ["Virtio", "GuestMemory", "HostSystem", "CKVM", "RateLimiter", "SnapshotFormat"]),
        .target(name: "VirtioRNG", dependencies: ["Virtio", "GuestMemory", "HostSystem", "RateLimiter", "SnapshotFormat"]),
        .target(name: "VirtioConsole", dependencies: ["Virtio", "Devices", "GuestMemory", "HostSystem", "SnapshotFormat"]),
        .target(name: "VirtioVsock", dependencies: ["Virtio", "GuestMemory", "HostSystem", "CKVM", "SnapshotFormat"]),
        // Firecracker's MicroVM Metadata Service: the data store, its guest
        // HTTP, V2 tokens, and the small ARP/IPv4/TCP stack in front of a tap.
        .target(name: "MMDS", dependencies: ["LeanJSON", "HostSystem", "VirtioNet"]),
        // Building and running a VM.
        .target(name: "VMM", dependencies: [
            "CKVM", "KVM", "GuestMemory", "SnapshotFormat", "Boot", "ACPI", "ArchX86", "Devices", "HostSystem",
            "Virtio", "PCI", "VirtioPCI", "VirtioMMIO", "VirtioBlock", "VirtioNet", "VirtioRNG", "VirtioConsole", "VirtioVsock", "MMDS", "RateLimiter",
        ]),
        // A small JSON parser, so the VMM needs no Foundation.
        .target(name: "LeanJSON"),
        // The guest agent's frames (docs/agent.md), shared by the agent and
        // the host; also built as Embedded Swift by guest/build-image.
        .target(name: "AgentProtocol"),
        .target(name: "CAgentSys"),
        // The host side of the agent: connections, exec sessions, file copies.
        .target(name: "AgentClient", dependencies: ["AgentProtocol", "HostSystem"]),
        // The guest agent; guest/build-agent builds the same sources as
        // Embedded Swift for the default guest's initramfs.
        .executableTarget(name: "swiftlet-agent", dependencies: ["AgentProtocol", "CAgentSys"]),
        // The per-VM control API: a small HTTP/1.1 server on a Unix socket
        // with Firecracker's resources (no Foundation, no SwiftNIO).
        .target(name: "ControlAPI", dependencies: ["CKVM", "VMM", "Devices", "HostSystem", "LeanJSON", "MMDS"]),
        // The project version every executable reports.
        .target(name: "SwiftletVersion"),
        // swiftlet-vmm's command line and config file (`swiftlet run` execs it).
        .target(name: "VMMCommand", dependencies: ["CKVM", "VMM", "ControlAPI", "HostSystem", "LeanJSON", "SwiftletVersion"]),
        // A fully static binary: no dynamic loader, no shared-library
        // relocations. This halves the VMM's resident memory (benchmark P2)
        // and shortens its start-up (P1).
        .executableTarget(
            name: "swiftlet-vmm", dependencies: ["VMMCommand"],
            linkerSettings: [.unsafeFlags(["-static-executable"], .when(platforms: [.linux]))]),
        .executableTarget(name: "swiftlet", dependencies: [
            "HostSystem", "SwiftletClient", "SwiftletVersion", "AgentClient", "AgentProtocol",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Yams", package: "Yams"),
        ]),
        // The VM definitions, REST API shapes and a small blocking HTTP/1.1
        // client over a Unix socket, shared by the CLI and the daemon's tests.
        .target(name: "SwiftletClient"),
        // cgroup v1 and v2 groups, per controller: the daemon's per-VM limits and the jailer's --cgroup.
        .target(name: "Cgroups", dependencies: ["HostSystem"]),
        // Firecracker's jailer: chroot, namespaces, cgroups, uid/gid drop, exec.
        .target(name: "Jailer", dependencies: ["CKVM", "HostSystem", "Cgroups"]),
        .executableTarget(name: "swiftlet-jailer", dependencies: ["Jailer", "HostSystem"]),
        // A page-fault handler for PUT /snapshot/load's Uffd backend, as
        // Firecracker ships example handlers: serves a VMM's userfaultfd
        // from a snapshot memory file.
        .target(name: "UffdHandler", dependencies: ["HostSystem", "GuestMemory", "LeanJSON"]),
        .executableTarget(name: "swiftlet-uffd-handler", dependencies: ["UffdHandler"]),
        // A blocking client for QEMU's Machine Protocol (QMP) on a Unix socket:
        // swiftletd controls qemu-system-x86_64 VMs with it.
        .target(name: "QMP", dependencies: ["HostSystem"]),
        // swiftletd: definitions store (GRDB), VMM supervisor, REST API (Hummingbird).
        .target(name: "SwiftletDaemon", dependencies: [
            "AgentClient", "AgentProtocol", "QCOW2", "QMP",
            "SwiftletClient", "SwiftletVersion", "Cgroups",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "swiftletd", dependencies: [
            "SwiftletDaemon",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        .testTarget(name: "HostSystemTests", dependencies: ["HostSystem"]),
        .testTarget(name: "SnapshotFormatTests", dependencies: ["SnapshotFormat", "HostSystem"]),
        .testTarget(name: "GuestMemoryTests", dependencies: ["GuestMemory", "SnapshotFormat"]),
        .testTarget(name: "BootTests", dependencies: ["Boot", "GuestMemory"]),
        .testTarget(name: "ACPITests", dependencies: ["ACPI"]),
        .testTarget(name: "ArchX86Tests", dependencies: ["ArchX86", "GuestMemory"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "GuestMemory", "SnapshotFormat"]),
        // Driver-side virtqueue mock shared by device tests.
        .target(name: "VirtioTestSupport", dependencies: ["Virtio", "GuestMemory"], path: "Tests/VirtioTestSupport"),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "VirtioTestSupport", "GuestMemory", "HostSystem", "SnapshotFormat"]),
        .testTarget(name: "PCITests", dependencies: ["PCI", "VirtioPCI", "Virtio", "VirtioTestSupport", "Devices", "GuestMemory", "HostSystem", "SnapshotFormat"]),
        .testTarget(name: "VirtioMMIOTests", dependencies: ["VirtioMMIO", "Virtio", "KVM", "VirtioTestSupport", "Devices", "GuestMemory", "HostSystem", "SnapshotFormat"]),
        .testTarget(name: "VirtioDeviceTests", dependencies: ["Virtio", "VirtioTestSupport", "VirtioBlock", "QCOW2", "VirtioNet", "VirtioRNG", "VirtioConsole", "GuestMemory", "HostSystem", "RateLimiter", "SnapshotFormat"]),
        .testTarget(name: "VirtioVsockTests", dependencies: ["VirtioVsock", "Virtio", "VirtioTestSupport", "GuestMemory", "HostSystem"]),
        // qcow2 images checked against qemu-img.
        .testTarget(name: "QCOW2Tests", dependencies: ["QCOW2", "HostSystem"]),
        .testTarget(name: "RateLimiterTests", dependencies: ["RateLimiter", "HostSystem"]),
        .testTarget(name: "VMMCommandTests", dependencies: ["VMMCommand", "VMM", "ControlAPI", "HostSystem"]),
        .testTarget(name: "LeanJSONTests", dependencies: ["LeanJSON"]),
        .testTarget(name: "AgentProtocolTests", dependencies: ["AgentProtocol"]),
        .testTarget(name: "AgentTests", dependencies: ["AgentClient", "AgentProtocol", "HostSystem"]),
        .testTarget(name: "MMDSTests", dependencies: ["MMDS", "LeanJSON", "VirtioNet", "Virtio", "VirtioTestSupport", "GuestMemory", "HostSystem"]),
        .testTarget(name: "ControlAPITests", dependencies: ["ControlAPI", "VMM", "KVM", "GuestMemory", "SnapshotFormat", "LeanJSON", "HostSystem", "RateLimiter"]),
        // Boots guest-kit programs on /dev/kvm.
        .testTarget(name: "IntegrationTests", dependencies: ["VMM", "RateLimiter", "Cgroups", "SnapshotFormat", "QCOW2"]),
        // swiftletd: store and validation unit tests, and a real daemon booting guests.
        .testTarget(name: "SwiftletDaemonTests", dependencies: ["SwiftletDaemon", "SwiftletClient", "AgentClient", "AgentProtocol", "QMP", .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "CgroupsTests", dependencies: ["Cgroups"]),
        .testTarget(name: "JailerTests", dependencies: ["Jailer", "Cgroups"]),
        // The QMP client against a fake server and a real qemu-system-x86_64.
        .testTarget(name: "QMPTests", dependencies: ["QMP", "HostSystem"]),
        .testTarget(name: "UffdHandlerTests", dependencies: ["UffdHandler", "GuestMemory", "HostSystem", "LeanJSON"]),
    ],
    swiftLanguageModes: [.v6]
)
