import GuestMemory
import KVM

/// All KVM holds for a machine: every vCPU (index = vCPU id) and the
/// VM-wide irqchips, PIT and clock. Guest RAM and device state are separate.
public struct MachineKVMState: Sendable, Equatable {
    public var vcpus: [VCPUState]
    public var vm: VMState
    /// How to restore, not part of the saved state (never written): set
    /// the KVM clock with KVM_CLOCK_REALTIME, so the guest's clock advances
    /// by the wall time since the capture (a load's `clock_realtime`).
    public var clockRealtime = false

    public init(vcpus: [VCPUState], vm: VMState, clockRealtime: Bool = false) {
        self.vcpus = vcpus
        self.vm = vm
        self.clockRealtime = clockRealtime
    }
}

extension VirtualMachine.RestoredMemory {
    /// Each RAM region's guest address and size, for the layout check.
    var layout: [(UInt64, UInt64)] {
        switch self {
        case let .image(image): image.regions.map { ($0.start, UInt64($0.bytes.count)) }
        case let .mapped(memory): memory.regions.map { ($0.start.rawValue, $0.size) }
        }
    }
}

/// A copy of guest RAM: one entry per RAM region of the memory plan.
public struct GuestMemoryImage: Sendable, Equatable {
    public struct Region: Sendable, Equatable {
        /// Guest-physical address of the region's first byte.
        public var start: UInt64
        public var bytes: [UInt8]

        public init(start: UInt64, bytes: [UInt8]) {
            self.start = start
            self.bytes = bytes
        }
    }

    public var regions: [Region]

    public init(regions: [Region]) {
        self.regions = regions
    }
}

extension VirtualMachine {
    /// Reads the KVM state of every vCPU and of the VM. The VM must be
    /// paused with every vCPU parked (`pause()` returned true); the vCPUs
    /// stay parked, and a `resume` waits, until the capture is done.
    public func captureKVMState() throws(VMMError) -> MachineKVMState {
        let captured = try pauseGate.whileAllParked { () throws(VMMError) -> MachineKVMState in
            do throws(KVMError) {
                // VM-wide state after the vCPUs: reading a vCPU's MP state can
                // accept pending INIT/SIPI, and the events it may raise land in
                // the irqchips captured after.
                let vcpuStates = try vcpus.map { (vcpu) throws(KVMError) -> VCPUState in try vcpu.captureState() }
                return MachineKVMState(vcpus: vcpuStates, vm: try handle.captureState())
            } catch {
                throw .kvm(error)
            }
        }
        guard let captured else { throw .notPaused(action: "capture the KVM state") }
        return captured
    }

    /// Copies guest RAM, region by region, while the VM is paused as for
    /// `captureKVMState` (a running guest would change it under the copy).
    /// Virtio devices are held first (see `captureDeviceSections`): their
    /// workers write guest RAM too, and must not while it is copied.
    public func copyGuestMemory() throws(VMMError) -> GuestMemoryImage {
        let copied = try pauseGate.whileAllParked { () throws(VMMError) -> GuestMemoryImage in
            holdDevicesForSnapshot()
            var regions: [GuestMemoryImage.Region] = []
            for region in memory.regions {
                guard let count = Int(exactly: region.size) else {
                    throw .memory(step: "copying guest RAM", cause: .outOfBounds(address: region.start, length: region.size))
                }
                do throws(GuestMemoryError) {
                    regions.append(GuestMemoryImage.Region(start: region.start.rawValue, bytes: try memory.readBytes(at: region.start, count: count)))
                } catch {
                    throw .memory(step: "copying guest RAM", cause: error)
                }
            }
            return GuestMemoryImage(regions: regions)
        }
        guard let copied else { throw .notPaused(action: "copy guest memory") }
        return copied
    }

    /// Refuses a saved machine that cannot be this configuration's: another
    /// vCPU count, vCPUs out of order, or RAM laid out differently.
    static func checkRestorable(_ state: MachineKVMState, _ saved: [(UInt64, UInt64)], configuration: VMConfiguration) throws(VMMError) {
        guard state.vcpus.count == configuration.cpuCount else {
            throw .snapshotMismatch(part: "the vCPU count", saved: "\(state.vcpus.count)", configured: "\(configuration.cpuCount)")
        }
        for (position, vcpu) in state.vcpus.enumerated() where vcpu.id != UInt32(position) {
            throw .snapshotMismatch(part: "vCPU \(position)'s id", saved: "\(vcpu.id)", configured: "\(position)")
        }
        let planned = MemoryPlan.ramRanges(memorySize: configuration.memorySize)
        let layout = { (ranges: [(UInt64, UInt64)]) in ranges.map { "0x\(String($0.0, radix: 16))+\($0.1)" }.joined(separator: ", ") }
        let wanted = planned.map { ($0.start.rawValue, $0.size) }
        guard saved.count == wanted.count, !zip(saved, wanted).contains(where: { $0 != $1 }) else {
            throw .snapshotMismatch(part: "the RAM layout", saved: layout(saved), configured: layout(wanted))
        }
    }

    /// Writes the image into guest RAM (its layout was checked by checkRestorable).
    static func fill(_ memory: GuestMemory, from image: GuestMemoryImage) throws(VMMError) {
        for region in image.regions {
            do {
                try memory.write(bytes: region.bytes, at: GuestAddress(region.start))
            } catch {
                throw .memory(step: "restoring guest RAM", cause: error)
            }
        }
    }
}
