import CKVM
import Glibc
import HostSystem

/// The VM-wide state KVM holds: the in-kernel interrupt controllers, the PIT
/// and the KVM clock, each as the kernel's structure in raw bytes.
public struct VMState: Sendable, Equatable {
    /// `struct kvm_irqchip` for chip 0 (master 8259 PIC).
    public var picMaster: [UInt8]
    /// `struct kvm_irqchip` for chip 1 (slave 8259 PIC).
    public var picSlave: [UInt8]
    /// `struct kvm_irqchip` for chip 2 (IO-APIC).
    public var ioAPIC: [UInt8]
    /// `struct kvm_pit_state2`.
    public var pit: [UInt8]
    /// `struct kvm_clock_data`.
    public var clock: [UInt8]

    public init(picMaster: [UInt8], picSlave: [UInt8], ioAPIC: [UInt8], pit: [UInt8], clock: [UInt8]) {
        self.picMaster = picMaster
        self.picSlave = picSlave
        self.ioAPIC = ioAPIC
        self.pit = pit
        self.clock = clock
    }
}

extension VirtualMachineHandle {
    /// Reads the irqchips, PIT and clock. Call with every vCPU outside KVM_RUN.
    public func captureState() throws(KVMError) -> VMState {
        let chips = try [GSIRoute.InterruptChip.picMaster, .picSlave, .ioAPIC].map { (chip) throws(KVMError) -> [UInt8] in
            var bytes = Self.irqchipBuffer(chip)
            try descriptor.kvmIoctl("KVM_GET_IRQCHIP \(chip)", CKVM_GET_IRQCHIP, bytes: &bytes)
            return bytes
        }
        var pit = [UInt8](repeating: 0, count: MemoryLayout<kvm_pit_state2>.size)
        try descriptor.kvmIoctl("KVM_GET_PIT2", CKVM_GET_PIT2, bytes: &pit)
        var clock = [UInt8](repeating: 0, count: MemoryLayout<kvm_clock_data>.size)
        try descriptor.kvmIoctl("KVM_GET_CLOCK", CKVM_GET_CLOCK, bytes: &clock)
        return VMState(picMaster: chips[0], picSlave: chips[1], ioAPIC: chips[2], pit: pit, clock: Self.withWallTime(clock))
    }

    /// KVM_GET_CLOCK reports the wall time beside the clock (KVM_CLOCK_REALTIME
    /// in `flags`, `realtime` in ns) only on hosts whose clocksource KVM can
    /// read together with the TSC; elsewhere (this kvm_pvm host, for one) the
    /// VMM stamps `realtime` with its own CLOCK_REALTIME, read just after,
    /// and sets the flag, so a `clock_realtime` restore works from any
    /// snapshot. A restore without it clears both (`settableClock`).
    static func withWallTime(_ bytes: [UInt8]) -> [UInt8] {
        guard var clock = VCPUState.decode(bytes, as: kvm_clock_data.self), clock.flags & UInt32(KVM_CLOCK_REALTIME) == 0 else { return bytes }
        var now = timespec()
        guard clock_gettime(CLOCK_REALTIME, &now) == 0, now.tv_sec >= 0 else { return bytes }
        clock.realtime = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        clock.flags |= UInt32(KVM_CLOCK_REALTIME)
        return VCPUState.encode(clock)
    }

    /// Loads `state` into this VM, which must have its irqchip and PIT made.
    /// Sizes are checked first, so a state of the wrong shape changes nothing.
    /// With `clockRealtime` (Firecracker's `clock_realtime`), the clock is set
    /// with KVM_CLOCK_REALTIME and the wall time KVM_GET_CLOCK saved, so KVM
    /// advances it by the wall time elapsed since the capture; refused
    /// before any change when the saved clock has no wall time or this
    /// host's KVM cannot take it (`clockRealtimeSupport`).
    public func restoreState(_ state: VMState, clockRealtime: Bool = false) throws(KVMError) {
        let chips: [(GSIRoute.InterruptChip, [UInt8])] = [(.picMaster, state.picMaster), (.picSlave, state.picSlave), (.ioAPIC, state.ioAPIC)]
        for (chip, bytes) in chips {
            try Self.expect("irqchip \(chip)", bytes, MemoryLayout<kvm_irqchip>.size)
        }
        try Self.expect("PIT", state.pit, MemoryLayout<kvm_pit_state2>.size)
        try Self.expect("KVM clock", state.clock, MemoryLayout<kvm_clock_data>.size)
        var clock = Self.settableClock(state.clock)
        if clockRealtime {
            if let reason = clockRealtimeSupport(saved: state.clock) { throw .incompatibleState(part: "the KVM clock with clock_realtime", reason: reason) }
            clock = Self.settableClock(state.clock, realtime: true)
        }

        // Firecracker's order: PIT, clock, then the three chips.
        var pit = state.pit
        try descriptor.kvmIoctl("KVM_SET_PIT2", CKVM_SET_PIT2, bytes: &pit)
        try descriptor.kvmIoctl("KVM_SET_CLOCK", CKVM_SET_CLOCK, bytes: &clock)
        for (chip, bytes) in chips {
            // The chip id comes from the slot, not the blob: the blob can only fill that chip.
            var buffer = bytes
            // SAFETY: the size was checked to be a kvm_irqchip; chip_id is its first u32.
            buffer.withUnsafeMutableBytes { $0.storeBytes(of: chip.rawValue, as: UInt32.self) }
            try descriptor.kvmIoctl("KVM_SET_IRQCHIP \(chip)", CKVM_SET_IRQCHIP, bytes: &buffer)
        }
    }

    /// The clock as KVM_SET_CLOCK should get it: flags cleared. TSC_STABLE is
    /// a report, not a setting (Firecracker clears it too), and with REALTIME
    /// KVM would advance the clock by the wall time since the capture, while
    /// the restored TSC MSRs resume where they stopped; the guest's clock
    /// then continues from the moment it was paused, consistently.
    ///
    /// With `realtime` (a `clock_realtime` load), KVM_CLOCK_REALTIME is the
    /// only flag and the saved wall time is kept: KVM then adds the wall
    /// time elapsed since the capture to the clock, as Firecracker asks it to.
    static func settableClock(_ bytes: [UInt8], realtime: Bool = false) -> [UInt8] {
        guard var clock = VCPUState.decode(bytes, as: kvm_clock_data.self) else { return bytes }
        clock.flags = realtime ? UInt32(KVM_CLOCK_REALTIME) : 0
        if !realtime { clock.realtime = 0 }
        clock.host_tsc = 0
        return VCPUState.encode(clock)
    }

    /// Why a `clock_realtime` restore of the saved `struct kvm_clock_data`
    /// cannot be done, or nil when it can: this host's KVM must list
    /// KVM_CLOCK_REALTIME among KVM_CAP_ADJUST_CLOCK's flags, and the saved
    /// clock must carry the wall time (`captureState` records it).
    public func clockRealtimeSupport(saved clockBytes: [UInt8]) -> String? {
        let flags = checkExtension(KVM_CAP_ADJUST_CLOCK)
        guard flags > 0, UInt32(flags) & UInt32(KVM_CLOCK_REALTIME) != 0 else {
            return "this host's KVM cannot advance the clock by the wall time (KVM_CAP_ADJUST_CLOCK flags 0x\(String(max(flags, 0), radix: 16)) lack KVM_CLOCK_REALTIME)"
        }
        guard let clock = VCPUState.decode(clockBytes, as: kvm_clock_data.self) else { return "the saved clock is not a kvm_clock_data" }
        guard clock.flags & UInt32(KVM_CLOCK_REALTIME) != 0 else {
            return "the snapshot's clock has no wall time (KVM_CLOCK_REALTIME): it was taken by a Swiftlet that did not record it"
        }
        return nil
    }

    /// A zeroed `struct kvm_irqchip` naming `chip` (chip_id is its first u32).
    static func irqchipBuffer(_ chip: GSIRoute.InterruptChip) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: MemoryLayout<kvm_irqchip>.size)
        // SAFETY: the buffer is a whole kvm_irqchip; chip_id is the u32 at offset 0.
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: chip.rawValue, as: UInt32.self) }
        return bytes
    }

    static func expect(_ part: String, _ bytes: [UInt8], _ size: Int) throws(KVMError) {
        guard bytes.count == size else { throw .stateSizeMismatch(part: part, expected: size, actual: bytes.count) }
    }

    /// Value of KVM_CHECK_EXTENSION on this VM (0 when absent); some
    /// capabilities, such as KVM_CAP_XSAVE2's size, are per VM.
    public func checkExtension(_ capability: Int32) -> Int32 {
        (try? descriptor.ioctl("KVM_CHECK_EXTENSION", CKVM_CHECK_EXTENSION, value: UInt(capability))) ?? 0
    }
}

extension GSIRoute.InterruptChip: CustomStringConvertible {
    public var description: String {
        switch self {
        case .picMaster: "PIC master"
        case .picSlave: "PIC slave"
        case .ioAPIC: "IO-APIC"
        }
    }
}
