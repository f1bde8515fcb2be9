import Devices
import Glibc
import HostSystem
import KVM
import Synchronization

/// The address/data pair of a message-signalled interrupt.
public struct MSIMessage: Equatable, Sendable {
    public var address: UInt64
    public var data: UInt32

    public init(address: UInt64, data: UInt32) {
        self.address = address
        self.data = data
    }
}

/// Programs where a GSI's message goes (KVM's GSI routing table in the VMM).
public protocol MSIRouter: Sendable {
    func route(gsi: UInt32, to message: MSIMessage)
}

/// One MSI-X vector's delivery: a GSI routed by the `MSIRouter`, raised by
/// triggering `line` (an irqfd in the VMM).
public struct MSIVector: Sendable {
    public let gsi: UInt32
    public let line: any InterruptLine

    public init(gsi: UInt32, line: any InterruptLine) {
        self.gsi = gsi
        self.line = line
    }
}

/// A level-triggered interrupt input (a PCI INTx line on an IO-APIC pin).
public protocol LevelInterruptLine: Sendable {
    func setLevel(_ asserted: Bool)
}

/// How PCI INTx pins reach the IO-APIC: INTA-INTD of device `d` go to GSI
/// 16 + (d + pin) % 8, the IO-APIC inputs PC chipsets leave to PCI. The DSDT
/// publishes the same table as \_SB.PCI0._PRT.
public enum PCIInterruptRouting {
    public static let firstGSI: UInt32 = 16
    public static let gsiCount: UInt32 = 8

    /// `pin` is 0 for INTA# to 3 for INTD#.
    public static func gsi(device: UInt8, pin: UInt8) -> UInt32 {
        firstGSI + (UInt32(device) + UInt32(pin)) % gsiCount
    }
}

// MARK: KVM

/// An irqfd: triggering it writes an eventfd that KVM turns into an
/// interrupt on its GSI without leaving the kernel.
public final class IRQFDLine: InterruptLine {
    public let eventFD: EventFD

    public init(vm: VirtualMachineHandle, gsi: UInt32) throws(PCIError) {
        do {
            eventFD = try EventFD()
        } catch {
            throw .host(step: "eventfd for GSI \(gsi)", message: "\(error)")
        }
        do {
            try vm.registerIRQFD(eventFD, gsi: gsi)
        } catch {
            throw .host(step: "irqfd for GSI \(gsi)", message: "\(error)")
        }
    }

    public func trigger() {
        try? eventFD.signal()
    }
}

/// The VM's interrupt plumbing for PCI: GSIs for MSI-X vectors (from 24 up,
/// above the IO-APIC's pins), their KVM routes, and the shared INTx lines.
public final class KVMInterruptRouting: MSIRouter {
    let vm: VirtualMachineHandle
    let log: @Sendable (String) -> Void
    private struct State {
        var nextGSI: UInt32 = 24
        var messages: [UInt32: MSIMessage] = [:]
        var reportedFailure = false
    }
    private let state = Mutex(State())
    private let levels = Mutex<[UInt32: Int]>([:])

    public init(vm: VirtualMachineHandle, log: @escaping @Sendable (String) -> Void = DeviceLog.standardError) {
        self.vm = vm
        self.log = log
    }

    /// `count` new GSIs, each with an irqfd. They deliver nothing until routed.
    public func allocateVectors(count: Int) throws(PCIError) -> [MSIVector] {
        let first = try state.withLock { (state) throws(PCIError) -> UInt32 in
            guard count >= 0, Int(state.nextGSI) + count <= VirtualMachineHandle.maximumGSIRoutes - GSIRoute.defaultIRQChipRoutes.count else {
                throw .host(step: "allocating \(count) MSI-X vectors", message: "KVM's GSI routing table is full")
            }
            defer { state.nextGSI += UInt32(count) }
            return state.nextGSI
        }
        var vectors: [MSIVector] = []
        for gsi in first..<(first + UInt32(count)) {
            vectors.append(MSIVector(gsi: gsi, line: try IRQFDLine(vm: vm, gsi: gsi)))
        }
        return vectors
    }

    /// Installs the whole table again (KVM_SET_GSI_ROUTING has no update):
    /// the IRQ chip routes, then every MSI route.
    public func route(gsi: UInt32, to message: MSIMessage) {
        state.withLock { state in
            guard state.messages[gsi] != message else { return }
            state.messages[gsi] = message
            let routes = GSIRoute.defaultIRQChipRoutes + state.messages.sorted { $0.key < $1.key }.map {
                GSIRoute.msi(gsi: $0.key, address: $0.value.address, data: $0.value.data)
            }
            do {
                try vm.setGSIRouting(routes)
            } catch {
                // A guest can only cause this with a message KVM refuses; the
                // vector then stays unrouted.
                if !state.reportedFailure { log("PCI: cannot route MSI-X GSI \(gsi): \(error)") }
                state.reportedFailure = true
            }
        }
    }

    /// The INTx line for IO-APIC input `gsi`. Several functions may share
    /// it: the input is asserted while any of them asserts it.
    public func intxLine(gsi: UInt32) -> any LevelInterruptLine {
        SharedLevelLine(routing: self, gsi: gsi)
    }

    fileprivate func changeLevel(gsi: UInt32, by delta: Int) {
        levels.withLock { levels in
            let before = levels[gsi, default: 0]
            let after = max(0, before + delta)
            levels[gsi] = after
            if (before == 0) != (after == 0) {
                try? vm.setInterruptLine(gsi, level: after > 0)
            }
        }
    }
}

/// One function's INTx output on a possibly shared IO-APIC input.
final class SharedLevelLine: LevelInterruptLine {
    let routing: KVMInterruptRouting
    let gsi: UInt32
    private let asserted = Mutex(false)

    init(routing: KVMInterruptRouting, gsi: UInt32) {
        self.routing = routing
        self.gsi = gsi
    }

    func setLevel(_ level: Bool) {
        asserted.withLock { asserted in
            guard asserted != level else { return }
            asserted = level
            routing.changeLevel(gsi: gsi, by: level ? 1 : -1)
        }
    }
}
