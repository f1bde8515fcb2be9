import HostSystem
import KVM
import Virtio

/// Why a virtio-mmio device could not be wired up.
public enum VirtioMMIOError: Error, Sendable, CustomStringConvertible {
    /// KVM refused the ioeventfd for a queue's notifications.
    case notifier(address: UInt64, queue: UInt32, cause: KVMError)
    /// The device refused to save or take back its own state (snapshots).
    case device(VirtioDeviceError)
    /// The saved queues could not be started again.
    case restoringQueues(VirtioTransportError)
    /// The transport was shut down: nothing is restored into it.
    case detached

    public var description: String {
        switch self {
        case let .notifier(address, queue, cause):
            "ioeventfd for queue \(queue) at 0x\(String(address, radix: 16)): \(cause)"
        case let .device(error): "\(error)"
        case let .restoringQueues(error): "restarting the saved queues: \(error)"
        case .detached: "the device was shut down"
        }
    }
}

/// What a virtio-mmio transport needs from the VMM: ioeventfds on its
/// QueueNotify register, one per queue, told apart by the value written
/// (the queue index), so that a notification never leaves the kernel.
/// KVM in the VMM; a recorder in tests.
public protocol VirtioMMIOPlatform: Sendable {
    /// Makes a 32-bit guest write of `queue` at `address` signal `eventFD`.
    func registerNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32) throws(VirtioMMIOError)
    func unregisterNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32)
}

public final class KVMVirtioMMIOPlatform: VirtioMMIOPlatform {
    let vm: VirtualMachineHandle

    public init(vm: VirtualMachineHandle) {
        self.vm = vm
    }

    public func registerNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32) throws(VirtioMMIOError) {
        do {
            try vm.registerIOEventFD(eventFD, address: address, length: UInt32(VirtioMMIOLayout.registerAccessSize),
                                     isPortIO: false, datamatch: UInt64(queue))
        } catch {
            throw .notifier(address: address, queue: queue, cause: error)
        }
    }

    public func unregisterNotifier(_ eventFD: EventFD, address: UInt64, queue: UInt32) {
        try? vm.unregisterIOEventFD(eventFD, address: address, length: UInt32(VirtioMMIOLayout.registerAccessSize),
                                    isPortIO: false, datamatch: UInt64(queue))
    }
}
