import Foundation
import Testing
@testable import VMM

/// virtio-mmio with the guest kit's ring-3 drivers (each boot takes well
/// under a second): the kit finds its devices from the virtio_mmio.device=
/// announcements on its command line. The blk and net programs run over
/// both transports in BlockKitTests and NetworkTests.
@Suite("virtio-mmio with the kit drivers", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct VirtioMMIOKitTests {
    static func bootRNG(_ cmdline: String, transport: VirtioTransportKind) throws -> (VMExitReason, String) {
        var configuration = VMConfiguration(kernelPath: try KitGuest.program("virtio-rng"), commandLine: cmdline, serial: .none)
        configuration.entropyDevice = true
        configuration.transport = transport
        let output = CapturingSerialOutput()
        let machine = try VirtualMachine(configuration: configuration, serialOutput: output)
        return (try machine.run(), output.text)
    }

    @Test("the kit's virtio-rng reads 64 KiB of entropy over either transport", arguments: VirtioTransportKind.allCases)
    func entropy(transport: VirtioTransportKind) throws {
        let (reason, text) = try Self.bootRNG("bytes=65536", transport: transport)
        #expect(reason == .poweredOff, "\(text)")
        #expect(text.contains("virtio ready transport=\(transport)"), "\(text)")
        if transport == .mmio {
            #expect(text.contains("virtio_mmio.device=4K@0xd0001000:6"), "announced on the command line: \(text)")
            #expect(text.contains("KIT virtio-rng virtio mmio 0xd0001000 irq=6 type=4"))
            #expect(!text.contains("pci access"), "no PCI probing over MMIO")
        }
        #expect(text.contains("KIT virtio-rng read=65536 requests=16"), "\(text)")
        #expect(text.contains("KIT virtio-rng PASS"))
    }

    @Test("queue notifications stay in the kernel (an ioeventfd per queue): 64 requests cost no more MMIO write exits than one",
          arguments: VirtioTransportKind.allCases)
    func notificationsStayInTheKernel(transport: VirtioTransportKind) throws {
        func run(bytes: Int) throws -> (writes: UInt64, notifications: UInt64, text: String) {
            // kick_always=1: the kit writes the notify register for every
            // request, whatever the device's suppression says, so 64
            // requests are 64 notifications however the worker is scheduled.
            var configuration = VMConfiguration(kernelPath: try KitGuest.program("virtio-rng"), commandLine: "bytes=\(bytes) kick_always=1", serial: .none)
            configuration.entropyDevice = true
            configuration.transport = transport
            let output = CapturingSerialOutput()
            let machine = try VirtualMachine(configuration: configuration, serialOutput: output)
            #expect(try machine.run() == .poweredOff)
            let counters = machine.counters()
            let writes = counters.exits.first { $0.kind == .mmioWrite }?.count ?? 0
            let notifications = counters.devices.first?.counters.first { $0.name == "notifications" }?.value ?? 0
            return (writes, notifications, output.text)
        }
        let one = try run(bytes: 4096), many = try run(bytes: 64 * 4096)
        #expect(many.text.contains("KIT virtio-rng read=262144 requests=64 kicks=64 "), "\(many.text)")
        // An eventfd coalesces signals the worker has not read yet, so the
        // device may count fewer than 64; it must have seen some.
        #expect(many.notifications >= 1, "the device saw \(many.notifications) notifications")
        #expect(many.writes < one.writes + 8, "MMIO write exits: \(one.writes) for one request, \(many.writes) for 64")
    }

    @Test("a hostile chain makes the device need a reset over either transport; a reset brings it back",
          arguments: ["loop", "oob", "zerolen", "oversize", "wrongdir"], VirtioTransportKind.allCases)
    func hostile(kind: String, transport: VirtioTransportKind) throws {
        let (reason, text) = try Self.bootRNG("hostile=\(kind) expect=handled", transport: transport)
        #expect(reason == .poweredOff, "\(text)")
        #expect(text.contains("KIT virtio-rng hostile=\(kind) outcome="), "\(text)")
        #expect(text.contains("KIT virtio-rng PASS"), "\(text)")
    }

    @Test("more virtio devices than virtio-mmio has interrupt lines stop the VMM before the guest starts, saying why")
    func tooManyDevices() throws {
        let limit = VirtioTransportKind.maximumMMIODevices
        let images = try (0...limit).map { _ in try BlockTestImage(megabytes: 1, name: "many") }
        var configuration = VMConfiguration(kernelPath: try KitGuest.program("hello"), serial: .none)
        configuration.disks = images.enumerated().map { DiskConfiguration(path: $1.path, id: "disk\($0)") }
        configuration.transport = .mmio
        do {
            _ = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
            Issue.record("\(limit + 1) devices were accepted over virtio-mmio")
        } catch {
            #expect("\(error)" == "invalid devices '\(limit + 1) virtio devices': expected at most \(limit) over virtio-mmio (one interrupt line each; --transport pci takes more)")
        }
        configuration.disks.removeLast()
        do {
            // Scoped: the machine holds its images' write locks until it goes away.
            let machine = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
            #expect(machine.mmio?.transports.count == limit)
        }
        configuration.transport = .pci
        configuration.disks = images.enumerated().map { DiskConfiguration(path: $1.path, id: "disk\($0)") }
        #expect(try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput()).pci?.transports.count == limit + 1)
    }
}

/// Where the announcements go on the kernel command line (no KVM needed).
@Suite("virtio-mmio command-line announcement")
struct VirtioMMIOCommandLineTests {
    static let devices = ["virtio_mmio.device=4K@0xd0001000:6", "virtio_mmio.device=4K@0xd0002000:7"]

    @Test("appended to the kernel's parameters, before a ' -- ' that starts init's arguments")
    func placement() {
        #expect(GuestBoot.withVirtioMMIODevices("console=ttyS0 quiet", Self.devices)
                == "console=ttyS0 quiet virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7")
        #expect(GuestBoot.withVirtioMMIODevices("", Self.devices) == Self.devices.joined(separator: " "))
        #expect(GuestBoot.withVirtioMMIODevices("root=/dev/vda -- init-arg --flag", Self.devices)
                == "root=/dev/vda virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7 -- init-arg --flag")
        #expect(GuestBoot.withVirtioMMIODevices("a --b c", Self.devices).hasSuffix("c " + Self.devices.joined(separator: " ")),
                "only a lone -- separates init's arguments")
        #expect(GuestBoot.withVirtioMMIODevices("console=ttyS0", []) == "console=ttyS0")
    }
}
