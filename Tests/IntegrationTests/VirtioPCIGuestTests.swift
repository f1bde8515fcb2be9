import Foundation
import KVM
import Testing
import VirtioPCI
@testable import VMM

/// The default Linux guest with a virtio-rng device on PCI: the stock
/// virtio_pci and virtio-rng drivers find it, negotiate, and read entropy,
/// through MSI-X and (with pci=nomsi) through INTx.
@Suite("virtio-pci in the default Linux guest", .serialized,
       .enabled(if: KitGuest.shouldRun && (LinuxGuest.isBuilt || KitGuest.isCI), LinuxGuest.skipReason))
struct VirtioPCIGuestTests {
    /// Prints what the checks read, one KEY=value per line.
    static let probe = """
        d=/sys/bus/pci/devices/0000:00:01.0
        echo PCI-ID=$(cat $d/vendor):$(cat $d/device) CLASS=$(cat $d/class)
        echo DRIVER=$(basename $(readlink $d/driver))
        echo RNG=$(cat /sys/class/misc/hw_random/rng_current)
        echo BYTES=$(head -c 64 /dev/hwrng | od -An -v -tx1 | tr -d ' \\n')
        grep virtio0 /proc/interrupts | sed 's/^/IRQ=/'
        """

    static func value(_ key: String, in output: String) -> String? {
        output.split(whereSeparator: \.isNewline).lazy
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            .first { $0.hasPrefix(key + "=") }
            .map { String($0.dropFirst(key.count + 1)) }
    }

    static func values(_ key: String, in output: String) -> [String] {
        output.split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            .filter { $0.hasPrefix(key + "=") }
            .map { String($0.dropFirst(key.count + 1)) }
    }

    static func checkEntropy(_ output: String) {
        #expect(value("PCI-ID", in: output) == "0x1af4:0x1044 CLASS=0xff0000", "console: \(output.suffix(3000))")
        #expect(value("DRIVER", in: output) == "virtio-pci")
        #expect(value("RNG", in: output)?.hasPrefix("virtio_rng") == true)
        // 64 random bytes: 128 hex digits, not all the same.
        let bytes = value("BYTES", in: output) ?? ""
        #expect(bytes.count == 128 && Set(bytes).count > 4, "hwrng gave '\(bytes)'")
    }

    /// Unbinding resets the device (status 0: worker joined, ioeventfds
    /// removed); binding again negotiates and activates it afresh.
    static let rebind = """
        echo 0000:00:01.0 > /sys/bus/pci/drivers/virtio-pci/unbind
        echo UNBOUND=$(ls /sys/bus/virtio/devices | wc -l)
        echo 0000:00:01.0 > /sys/bus/pci/drivers/virtio-pci/bind
        echo REBOUND=$(head -c 64 /dev/hwrng | od -An -v -tx1 | tr -d ' \n')
        """

    @Test("--rng: Linux binds virtio-pci and virtio_rng, /dev/hwrng gives bytes, interrupts come by MSI-X; rebinding resets and restarts it",
          .timeLimit(.minutes(5)))
    func entropyWithMSIX() throws {
        let result = try ProcessTests.run("swiftlet", ["run", "--rng", "--", "sh", "-c", Self.probe + "\n" + Self.rebind])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        Self.checkEntropy(result.stdout)
        // Separate vectors for configuration changes and the request queue.
        let lines = Self.values("IRQ", in: result.stdout)
        #expect(lines.contains { $0.contains("PCI-MSI") && $0.hasSuffix("virtio0-config") }, "interrupts: \(lines)")
        let irq = lines.first { $0.contains("PCI-MSI") && $0.hasSuffix("virtio0-input") } ?? ""
        let count = irq.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        #expect(count > 0, "no MSI-X interrupt counted: \(irq)")
        // What is left bound: the vsock device `swiftlet run` adds for the guest agent.
        #expect(Self.value("UNBOUND", in: result.stdout) == "1")
        let again = Self.value("REBOUND", in: result.stdout) ?? ""
        #expect(again.count == 128 && Set(again).count > 4, "hwrng after rebinding gave '\(again)'")
    }

    @Test("with pci=nomsi the device interrupts through INTx on the IO-APIC pin the _PRT names",
          .timeLimit(.minutes(5)))
    func entropyWithINTx() throws {
        let result = try ProcessTests.run("swiftlet", ["run", "--rng", "--cmdline", "pci=nomsi", "--", "sh", "-c", Self.probe])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        Self.checkEntropy(result.stdout)
        // Slot 1, INTA: GSI 16 + (1 + 0) % 8 = 17, level-triggered.
        let irq = Self.value("IRQ", in: result.stdout) ?? ""
        #expect(irq.contains("IO-APIC") && irq.contains("17-fasteoi"), "interrupt line: \(irq)")
    }
}

/// PCI devices on kit guests: no Linux needed.
@Suite("virtio-pci device lifetime", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct VirtioPCILifetimeTests {
    @Test("a VM's virtio transports, guest memory and KVM VM are freed with it (--on-reboot restart builds a new one each time)",
          arguments: VirtioTransportKind.allCases)
    func devicesFreedWithTheVM(transport kind: VirtioTransportKind) throws {
        weak var transport: AnyObject?
        weak var handle: VirtualMachineHandle?
        try {
            var configuration = VMConfiguration(kernelPath: try KitGuest.program("hello"), serial: .none)
            configuration.entropyDevice = true
            configuration.transport = kind
            let machine = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
            switch kind {
            case .pci:
                #expect(machine.pci?.transports.count == 1 && machine.mmio == nil)
                transport = machine.pci?.transports.first
            case .mmio:
                #expect(machine.mmio?.transports.count == 1 && machine.pci == nil)
                transport = machine.mmio?.transports.first
            }
            handle = machine.handle
            #expect(try machine.run() == .poweredOff)
        }()
        #expect(transport == nil, "the transport outlived its VM")
        #expect(handle == nil, "the KVM VM outlived the VirtualMachine")
    }
}

/// `--console virtio`: Linux's virtio_console driver binds the device and
/// hvc0 carries the console.
@Suite("virtio-console in the default Linux guest", .serialized,
       .enabled(if: KitGuest.shouldRun && (LinuxGuest.isBuilt || KitGuest.isCI), LinuxGuest.skipReason))
struct VirtioConsoleGuestTests {
    @Test("--console virtio with console=hvc0: the guest's console is hvc0 and its output reaches the terminal",
          .timeLimit(.minutes(5)))
    func hvc0IsTheConsole() throws {
        let result = try ProcessTests.run("swiftlet", [
            "run", "--verbose", "--console", "virtio", "--cmdline", "console=hvc0", "--",
            "sh", "-c", "echo ACTIVE=$(cat /sys/class/tty/console/active); echo DRIVER=$(basename $(readlink /sys/bus/pci/devices/0000:00:01.0/driver)); echo via-hvc0 > /dev/hvc0",
        ])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(VirtioPCIGuestTests.value("ACTIVE", in: result.stdout)?.contains("hvc0") == true, "console: \(result.stdout.suffix(3000))")
        #expect(VirtioPCIGuestTests.value("DRIVER", in: result.stdout) == "virtio-pci")
        // The console itself is on stderr with --verbose; stdout is the command's.
        #expect(result.stderr.contains("via-hvc0"), "stderr: \(result.stderr.suffix(3000))")
    }
}
