import Glibc
import HostSystem
import VMM

/// Boots the VM and returns the process exit status: the guest's power-off
/// is success; reboot, crash and signals get their own statuses.
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
    writeAll(STDERR_FILENO, message + "\n")
}

func writeAll(_ descriptor: Int32, _ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}

/// The `swiftlet-vmm` program: parse, run, exit with the status.
public enum SwiftletVMMMain {
    public static func main(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
        let action: VMMArguments.Action
        do {
            action = try VMMArguments.parse(arguments)
        } catch {
            printError("swiftlet-vmm: \(error)")
            exit(VMMExitStatus.failure.rawValue)
        }
        switch action {
        case .help:
            writeAll(STDOUT_FILENO, VMMArguments.help)
            exit(0)
        case .version:
            writeAll(STDOUT_FILENO, VMMArguments.version + "\n")
            exit(0)
        case let .run(configuration):
            exit(runVM(configuration).rawValue)
        }
    }
}
