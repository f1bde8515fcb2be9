/// Why KVM_RUN returned to user space, with the data the VMM needs to act.
public enum VCPUExit: Sendable, Equatable {
    /// Port input: the VMM fills `size` bytes (×count) in the run area.
    case portIn(port: UInt16, size: Int, count: Int)
    /// Port output of `size` bytes (×count), readable from the run area.
    case portOut(port: UInt16, size: Int, count: Int)
    /// A read of unbacked guest-physical memory.
    case mmioRead(address: UInt64, length: Int)
    /// A write to unbacked guest-physical memory.
    case mmioWrite(address: UInt64, length: Int)
    /// The guest executed HLT with no in-kernel LAPIC to park it.
    case halt
    /// Triple fault or similar: the guest cannot continue.
    case shutdown
    /// PSCI-like system event (reset, shutdown, crash).
    case systemEvent(type: UInt32)
    /// KVM could not handle something; suberror 1 is an emulation failure.
    case internalError(suberror: UInt32, data: [UInt64])
    /// VM entry failed (invalid guest state).
    case failedEntry(hardwareReason: UInt64)
    /// KVM_RUN was interrupted by a signal or immediate_exit (stop requests).
    case interrupted
    /// Any exit reason the VMM does not handle.
    case unhandled(reason: UInt32)
}

extension VCPUExit {
    /// Readable suberror name for internal errors.
    public static func internalErrorName(_ suberror: UInt32) -> String {
        switch suberror {
        case 1: "emulation failure (an instruction KVM's emulator cannot run)"
        case 2: "simultaneous exceptions"
        case 3: "delivery event failure"
        case 4: "unexpected exit reason"
        default: "suberror \(suberror)"
        }
    }
}
