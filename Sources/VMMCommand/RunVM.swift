import ArgumentParser
import Glibc
import HostSystem
import VMM

/// Boots the VM the options describe and returns the process exit status:
/// the guest's power-off is success; reboot and crash get their own status.
public func runVM(_ configuration: VMConfiguration) -> VMMExitStatus {
    while true {
        let reason: VMExitReason
        do {
            let machine = try VirtualMachine(configuration: configuration)
            reason = try machine.run()
        } catch {
            printError("swiftlet: \(error)")
            return .failure
        }
        switch reason {
        case .poweredOff, .stoppedByUser:
            return .poweredOff
        case let .stoppedBySignal(signal):
            printError("swiftlet: stopped by signal \(signal)")
            return .stoppedBySignal
        case .rebootRequested:
            if configuration.onReboot == .restart { continue }
            printError("swiftlet: guest requested a reboot; exiting (use --on-reboot restart to boot again)")
            return .guestRebooted
        case let .crashed(report):
            printError("swiftlet: guest crashed\n\(report)")
            return .guestCrashed
        }
    }
}

/// Writes a line to stderr, unbuffered.
public func printError(_ message: String) {
    let bytes = Array((message + "\n").utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

/// `swiftlet-vmm`: one process, one VM.
public struct SwiftletVMMCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "swiftlet-vmm",
        abstract: "Run one KVM virtual machine.",
        discussion: """
            Boots a Linux kernel (ELF vmlinux through its PVH entry, or a bzImage through the \
            64-bit boot protocol) on /dev/kvm with an 8250 serial console and ACPI power-off.

            Exit status: 0 when the guest powers off, 1 on bad input or a host error, \
            2 when the guest reboots with --on-reboot exit, 3 when the guest crashes \
            (triple fault, emulation failure), with the vCPU registers on stderr, \
            4 when SIGINT, SIGTERM or SIGHUP stopped it.

            Example:
              swiftlet-vmm --kernel vmlinux --initrd initrd.cpio.gz --cpus 2 --memory 256M
            """)

    @OptionGroup public var options: VMOptions

    public init() {}

    public func run() throws {
        let configuration: VMConfiguration
        do {
            configuration = try options.configuration()
        } catch {
            printError("swiftlet-vmm: \(error)")
            throw ExitCode(VMMExitStatus.failure.rawValue)
        }
        let status = runVM(configuration)
        if status != .poweredOff { throw ExitCode(status.rawValue) }
    }
}

