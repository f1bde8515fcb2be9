import CKVM
import Glibc
import HostSystem
import Synchronization

/// One virtual CPU: its fd and the `kvm_run` area shared with the kernel.
/// Run it from one thread only; `requestExit` may be called from any thread.
public final class VCPUHandle: Sendable {
    public let id: UInt32
    public let descriptor: OwnedFileDescriptor
    let runArea: MemoryMapping
    /// The host's state formats, for captureState and restoreState.
    let stateSupport: VCPUStateSupport

    init(id: UInt32, descriptor: OwnedFileDescriptor, runArea: MemoryMapping, stateSupport: VCPUStateSupport) {
        self.id = id
        self.descriptor = descriptor
        self.runArea = runArea
        self.stateSupport = stateSupport
    }

    private var runState: UnsafeMutablePointer<kvm_run> {
        // SAFETY: the mapping is the vCPU's kvm_run area, at least sizeof(kvm_run) bytes, alive as long as self.
        runArea.address.assumingMemoryBound(to: kvm_run.self)
    }

    /// Enters the guest until the next exit KVM hands to user space.
    public func run() throws(KVMError) -> VCPUExit {
        do throws(SystemCallError) {
            _ = try systemCall("KVM_RUN", retryOnInterrupt: false) {
                ckvm_ioctl_value(descriptor.rawValue, CKVM_RUN, 0)
            }
        } catch {
            if error.errno == .interrupted || error.errno == .wouldBlock {
                ckvm_run_set_immediate_exit(runState, 0)
                return .interrupted
            }
            throw .systemCall(step: "KVM_RUN on vCPU \(id)", cause: error)
        }
        let run = runState
        switch Int32(run.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let port = ckvm_run_io_port(run)
            let size = Int(ckvm_run_io_size(run))
            let count = Int(ckvm_run_io_count(run))
            return ckvm_run_io_direction(run) == UInt8(KVM_EXIT_IO_OUT)
                ? .portOut(port: port, size: size, count: count)
                : .portIn(port: port, size: size, count: count)
        case KVM_EXIT_MMIO:
            let address = ckvm_run_mmio_address(run)
            let length = Int(min(ckvm_run_mmio_length(run), 8))
            return ckvm_run_mmio_is_write(run) != 0 ? .mmioWrite(address: address, length: length) : .mmioRead(address: address, length: length)
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(type: ckvm_run_system_event_type(run))
        case KVM_EXIT_INTERNAL_ERROR:
            let count = min(ckvm_run_internal_ndata(run), 16)
            return .internalError(suberror: ckvm_run_internal_suberror(run), data: (0..<count).map { ckvm_run_internal_data(run, $0) })
        case KVM_EXIT_FAIL_ENTRY:
            return .failedEntry(hardwareReason: ckvm_run_fail_entry_reason(run))
        case KVM_EXIT_INTR:
            return .interrupted
        default:
            return .unhandled(reason: run.pointee.exit_reason)
        }
    }

    /// The data bytes of the current port-I/O exit (size × count bytes), or
    /// nil if KVM reported an offset outside the run area.
    public var portIOData: UnsafeMutableRawBufferPointer? {
        let run = runState
        let offset = Int(ckvm_run_io_data_offset(run))
        let length = Int(ckvm_run_io_size(run)) * Int(ckvm_run_io_count(run))
        guard offset >= 0, length >= 0, offset <= runArea.size, length <= runArea.size - offset else { return nil }
        // SAFETY: the range was checked to lie inside the run area mapping.
        return UnsafeMutableRawBufferPointer(start: runArea.address + offset, count: length)
    }

    /// The 8-byte data field of the current MMIO exit.
    public var mmioData: UnsafeMutableRawBufferPointer {
        // SAFETY: kvm_run.mmio.data is an 8-byte array inside the run area.
        UnsafeMutableRawBufferPointer(start: ckvm_run_mmio_data(runState), count: 8)
    }

    /// Makes the current or next KVM_RUN return `.interrupted` at once. Pair
    /// with a signal to the vCPU thread to break a running guest out.
    public func requestExit() {
        // An atomic store (other threads call this): KVM reads it on entry,
        // and the signal forces a re-check for a vCPU already inside the guest.
        ckvm_run_set_immediate_exit(runState, 1)
    }

    /// Whether an exit was requested and KVM_RUN has not yet consumed it.
    public var exitRequested: Bool { ckvm_run_immediate_exit(runState) != 0 }

    // MARK: Register state

    public func registers() throws(KVMError) -> kvm_regs {
        var value = kvm_regs()
        try descriptor.kvmIoctl("KVM_GET_REGS vCPU \(id)", CKVM_GET_REGS, pointer: &value)
        return value
    }

    public func setRegisters(_ registers: kvm_regs) throws(KVMError) {
        var value = registers
        try descriptor.kvmIoctl("KVM_SET_REGS vCPU \(id)", CKVM_SET_REGS, pointer: &value)
    }

    public func specialRegisters() throws(KVMError) -> kvm_sregs {
        var value = kvm_sregs()
        try descriptor.kvmIoctl("KVM_GET_SREGS vCPU \(id)", CKVM_GET_SREGS, pointer: &value)
        return value
    }

    public func setSpecialRegisters(_ registers: kvm_sregs) throws(KVMError) {
        var value = registers
        try descriptor.kvmIoctl("KVM_SET_SREGS vCPU \(id)", CKVM_SET_SREGS, pointer: &value)
    }

    public func setFPU(_ fpu: kvm_fpu) throws(KVMError) {
        var value = fpu
        try descriptor.kvmIoctl("KVM_SET_FPU vCPU \(id)", CKVM_SET_FPU, pointer: &value)
    }

    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        var list = CPUIDList(entries: entries)
        _ = try list.withRawBuffer { (raw) throws(KVMError) in
            try descriptor.kvmIoctl("KVM_SET_CPUID2 vCPU \(id)", CKVM_SET_CPUID2, buffer: raw)
        }
    }

    /// Writes MSRs; fails naming the first MSR KVM refused.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(KVMError) {
        let header = Int(ckvm_msrs_header_size())
        let stride = MemoryLayout<kvm_msr_entry>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: header + msrs.count * stride, alignment: 16)
        defer { raw.deallocate() }
        // SAFETY: header and entries are written inside the allocation sized for them.
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: header + msrs.count * stride)
        raw.storeBytes(of: UInt32(msrs.count), as: UInt32.self)
        for (position, msr) in msrs.enumerated() {
            var entry = kvm_msr_entry()
            entry.index = msr.index
            entry.data = msr.value
            raw.storeBytes(of: entry, toByteOffset: header + position * stride, as: kvm_msr_entry.self)
        }
        let written = try descriptor.kvmIoctl("KVM_SET_MSRS vCPU \(id)", CKVM_SET_MSRS, buffer: raw)
        if written >= 0, written < msrs.count {
            throw .msrRefused(step: "KVM_SET_MSRS vCPU \(id)", index: msrs[Int(written)].index)
        }
    }

    public func localAPIC() throws(KVMError) -> kvm_lapic_state {
        var value = kvm_lapic_state()
        try descriptor.kvmIoctl("KVM_GET_LAPIC vCPU \(id)", CKVM_GET_LAPIC, pointer: &value)
        return value
    }

    public func setLocalAPIC(_ state: kvm_lapic_state) throws(KVMError) {
        var value = state
        try descriptor.kvmIoctl("KVM_SET_LAPIC vCPU \(id)", CKVM_SET_LAPIC, pointer: &value)
    }

    public func setMPState(_ state: UInt32) throws(KVMError) {
        var value = kvm_mp_state(mp_state: state)
        try descriptor.kvmIoctl("KVM_SET_MP_STATE vCPU \(id)", CKVM_SET_MP_STATE, pointer: &value)
    }
}
