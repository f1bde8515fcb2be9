import Boot
import Devices
import GuestMemory
import HostSystem
import KVM
import PCI
import SnapshotFormat
import VirtioBlock
import VirtioMMIO
import VirtioPCI
import VirtioNet
import VirtioVsock

/// Why a VM could not be built or run. Each case names the step.
public enum VMMError: Error, Sendable, CustomStringConvertible {
    case invalidConfiguration(field: String, value: String, expected: String)
    case readFile(role: String, path: String, cause: SystemCallError)
    /// A kernel or initrd that is a FIFO, device, directory or socket.
    case notARegularFile(role: String, path: String, kind: String)
    /// A kernel or initrd larger than its cap.
    case fileTooLarge(role: String, path: String, size: UInt64, maximum: UInt64)
    case kvm(KVMError)
    case memory(step: String, cause: GuestMemoryError)
    case boot(step: String, message: String)
    case host(step: String, cause: SystemCallError)
    case bus(BusError)
    case pci(PCIError)
    /// A network interface's tap or MAC address is unusable.
    case network(id: String, cause: VirtioNetError)
    /// A --disk image that cannot be attached.
    case disk(VirtioBlockError)
    /// The vsock device's CID or Unix socket is unusable.
    case vsock(VsockError)
    /// `action` needs the VM paused, with every vCPU parked.
    case notPaused(action: String)
    /// A saved machine state does not fit the configuration it is restored into.
    case snapshotMismatch(part: String, saved: String, configured: String)
    /// `device`'s saved state is malformed or out of range.
    case deviceStateDecoding(device: String, cause: StateDecodingError)
    /// `device` refused to save or take back its state.
    case deviceSnapshot(device: String, cause: VirtioMMIOError)
    /// A virtio-pci function refused to save or take back its state.
    case pciDeviceSnapshot(device: String, cause: VirtioPCISnapshotError)
    /// The snapshot state file could not be read, or failed its checks.
    case snapshotFile(path: String, cause: SnapshotFileError)
    /// The state file lacks a section every snapshot has.
    case snapshotSectionMissing(path: String, tag: String)
    /// A section of the state file is not well formed.
    case snapshotSection(path: String, tag: String, cause: StateDecodingError)
    /// A disk's image changed size since the snapshot (the guest's view of it would be wrong).
    case diskResized(id: String, path: String, saved: UInt64, current: UInt64)
    /// Writing the snapshot's memory file failed.
    case snapshotMemoryFile(path: String, cause: GuestMemoryError)
    /// Something the snapshot cannot carry (an inherited tap descriptor...).
    case notSnapshottable(String)

    public var description: String {
        switch self {
        case let .invalidConfiguration(field, value, expected):
            "invalid \(field) '\(value)': expected \(expected)"
        case let .readFile(role, path, cause):
            switch cause.errno {
            case .noEntry: "\(role) '\(path)' does not exist"
            case .permissionDenied: "\(role) '\(path)' is not readable (permission denied)"
            default: "cannot read \(role) '\(path)': \(cause.errno)"
            }
        case let .notARegularFile(role, path, kind):
            "\(role) '\(path)' is \(kind): expected a regular file"
        case let .fileTooLarge(role, path, size, maximum):
            "\(role) '\(path)' is \(size) bytes: at most \(maximum) (\(maximum >> 20) MiB) are accepted"
        case let .kvm(error):
            "\(error)"
        case let .memory(step, cause):
            "\(step): \(cause)"
        case let .boot(step, message):
            "\(step): \(message)"
        case let .host(step, cause):
            "\(step): \(cause)"
        case let .bus(error):
            "device layout: \(error)"
        case let .pci(error):
            "PCI: \(error)"
        case let .network(id, cause):
            "network interface \(id): \(cause)"
        case let .disk(error):
            "\(error)"
        case let .vsock(error):
            "\(error)"
        case let .notPaused(action):
            "cannot \(action): the VM is not paused (pause it, and wait until every vCPU has stopped)"
        case let .snapshotMismatch(part, saved, configured):
            "the saved state does not fit this VM: \(part) is \(saved) in the snapshot, \(configured) in the configuration"
        case let .deviceStateDecoding(device, cause):
            "the saved state of \(device) is invalid: \(cause)"
        case let .deviceSnapshot(device, cause):
            "\(device): \(cause)"
        case let .pciDeviceSnapshot(device, cause):
            "\(device): \(cause)"
        case let .snapshotFile(path, cause):
            switch cause {
            case .read, .write: "\(cause)"
            default: "snapshot \(path): \(cause)"
            }
        case let .snapshotSectionMissing(path, tag):
            "snapshot \(path) has no '\(tag)' section (not written by this VMM?)"
        case let .snapshotSection(path, tag, cause):
            "snapshot \(path): section '\(tag)' is malformed: \(cause)"
        case let .diskResized(id, path, saved, current):
            "disk '\(id)' (\(path)) is \(current) bytes now but was \(saved) bytes when the snapshot was taken"
        case let .snapshotMemoryFile(_, cause):
            "cannot write the snapshot memory: \(cause)"
        case let .notSnapshottable(reason):
            reason
        }
    }
}

extension VMMError {
    /// The error for a file `readRegularFile` refused.
    public init(reading role: String, path: String, _ error: RegularFileError) {
        switch error {
        case let .open(cause), let .read(cause): self = .readFile(role: role, path: path, cause: cause)
        case let .notARegularFile(kind): self = .notARegularFile(role: role, path: path, kind: kind)
        case let .tooLarge(size, maximum): self = .fileTooLarge(role: role, path: path, size: size, maximum: maximum)
        }
    }
}

/// Process exit statuses of swiftlet-vmm, for scripts.
public enum VMMExitStatus: Int32, Sendable {
    /// The guest powered off.
    case poweredOff = 0
    /// Bad arguments, a missing file, or a host failure before or while running.
    case failure = 1
    /// The guest asked to reboot and `--on-reboot exit` was given.
    case guestRebooted = 2
    /// The guest crashed: triple fault, emulation failure, failed VM entry.
    case guestCrashed = 3
    /// SIGINT, SIGTERM or SIGHUP stopped the VM (the guest did not shut down).
    case stoppedBySignal = 4
}
