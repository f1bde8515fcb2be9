import CKVM
import HostSystem

/// Everything KVM holds for one vCPU, as the kernel's own structures in raw
/// bytes (each sized by the C struct), so a snapshot layer can store it
/// without knowing the C types. Restore it only on a host whose KVM uses the
/// same sizes (`restoreState` checks them).
public struct VCPUState: Sendable, Equatable {
    /// How the FPU/SSE/AVX state is kept.
    public enum FPUFormat: UInt8, Sendable {
        /// `struct kvm_xsave` (KVM_GET/SET_XSAVE; larger with KVM_CAP_XSAVE2).
        case xsave = 1
        /// `struct kvm_fpu` (KVM_GET/SET_FPU), where XSAVE is unsupported.
        case legacyFPU = 2
    }

    /// The vCPU id it was captured from.
    public var id: UInt32
    /// `struct kvm_mp_state` (running, halted, waiting for SIPI...).
    public var mpState: [UInt8]
    /// `struct kvm_regs`.
    public var regs: [UInt8]
    /// `struct kvm_sregs`.
    public var sregs: [UInt8]
    public var fpuFormat: FPUFormat
    /// `struct kvm_xsave` (or `struct kvm_fpu`, per `fpuFormat`).
    public var fpu: [UInt8]
    /// `struct kvm_xcrs`; nil where KVM lacks KVM_CAP_XCRS.
    public var xcrs: [UInt8]?
    /// `struct kvm_debugregs`.
    public var debugRegs: [UInt8]
    /// `struct kvm_lapic_state`: the local APIC's register page.
    public var lapic: [UInt8]
    /// Every MSR KVM_GET_MSRS would read for this vCPU, in index-list order.
    public var msrs: [MSREntry]
    /// `struct kvm_vcpu_events`: pending exceptions, interrupts, NMI, SMI.
    public var events: [UInt8]

    public struct MSREntry: Sendable, Equatable {
        public var index: UInt32
        public var value: UInt64
        public init(index: UInt32, value: UInt64) {
            self.index = index
            self.value = value
        }
    }

    public init(id: UInt32, mpState: [UInt8], regs: [UInt8], sregs: [UInt8], fpuFormat: FPUFormat, fpu: [UInt8],
                xcrs: [UInt8]?, debugRegs: [UInt8], lapic: [UInt8], msrs: [MSREntry], events: [UInt8]) {
        self.id = id
        self.mpState = mpState
        self.regs = regs
        self.sregs = sregs
        self.fpuFormat = fpuFormat
        self.fpu = fpu
        self.xcrs = xcrs
        self.debugRegs = debugRegs
        self.lapic = lapic
        self.msrs = msrs
        self.events = events
    }

    /// The general-purpose registers, decoded (for checks and crash reports).
    public var decodedRegisters: kvm_regs? { Self.decode(regs, as: kvm_regs.self) }

    /// The special registers, decoded.
    public var decodedSpecialRegisters: kvm_sregs? { Self.decode(sregs, as: kvm_sregs.self) }

    static func decode<T: BitwiseCopyable>(_ bytes: [UInt8], as type: T.Type) -> T? {
        guard bytes.count == MemoryLayout<T>.size else { return nil }
        // SAFETY: the array holds exactly size-of-T bytes, and every bit pattern is a valid T (a C struct of integers).
        return bytes.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    static func encode<T: BitwiseCopyable>(_ value: T) -> [UInt8] {
        // SAFETY: reads the value's own size-of-T bytes.
        withUnsafeBytes(of: value) { Array($0) }
    }
}

/// What a VCPUHandle needs to know of its host to capture and restore state;
/// read once when the vCPU is made.
struct VCPUStateSupport: Sendable {
    /// Bytes of the XSAVE area KVM_GET_XSAVE2/KVM_SET_XSAVE use (at least
    /// `struct kvm_xsave`); nil without KVM_CAP_XSAVE.
    var xsaveSize: Int?
    /// Whether KVM_GET_XSAVE2 exists (KVM_CAP_XSAVE2), needed for areas past 4 KiB.
    var hasXSAVE2: Bool
    var hasXCRs: Bool
    /// KVM_GET_MSR_INDEX_LIST.
    var msrIndices: [UInt32]
}

extension VCPUHandle {
    /// MSRs whose restore depends on others: the TSC deadline is accepted
    /// only once the TSC and the LAPIC (in TSC-deadline mode) are back.
    static let deferredMSRs: Set<UInt32> = [0x6E0]  // IA32_TSC_DEADLINE
    /// KVM_GET/SET_MSRS refuse more than 255 entries at once (MAX_IO_MSRS 256).
    static let msrChunk = 255

    /// Reads all KVM state of this vCPU. Call only while the vCPU is outside
    /// KVM_RUN (the VM paused), with pending I/O completed.
    public func captureState() throws(KVMError) -> VCPUState {
        // Order as Firecracker's save_state: MP state first, since
        // KVM_GET_MP_STATE may process pending INIT/SIPI into the LAPIC and
        // registers; vCPU events last, as the GETs before may change what is pending.
        var mpState = Self.zeroed(kvm_mp_state.self)
        try descriptor.kvmIoctl("KVM_GET_MP_STATE vCPU \(id)", CKVM_GET_MP_STATE, bytes: &mpState)
        var regs = Self.zeroed(kvm_regs.self)
        try descriptor.kvmIoctl("KVM_GET_REGS vCPU \(id)", CKVM_GET_REGS, bytes: &regs)
        var sregs = Self.zeroed(kvm_sregs.self)
        try descriptor.kvmIoctl("KVM_GET_SREGS vCPU \(id)", CKVM_GET_SREGS, bytes: &sregs)

        let fpuFormat: VCPUState.FPUFormat
        var fpu: [UInt8]
        if let size = stateSupport.xsaveSize {
            fpuFormat = .xsave
            fpu = [UInt8](repeating: 0, count: size)
            if stateSupport.hasXSAVE2 {
                try descriptor.kvmIoctl("KVM_GET_XSAVE2 vCPU \(id)", CKVM_GET_XSAVE2, bytes: &fpu)
            } else {
                try descriptor.kvmIoctl("KVM_GET_XSAVE vCPU \(id)", CKVM_GET_XSAVE, bytes: &fpu)
            }
        } else {
            fpuFormat = .legacyFPU
            fpu = Self.zeroed(kvm_fpu.self)
            try descriptor.kvmIoctl("KVM_GET_FPU vCPU \(id)", CKVM_GET_FPU, bytes: &fpu)
        }

        var xcrs: [UInt8]?
        if stateSupport.hasXCRs {
            var bytes = Self.zeroed(kvm_xcrs.self)
            try descriptor.kvmIoctl("KVM_GET_XCRS vCPU \(id)", CKVM_GET_XCRS, bytes: &bytes)
            xcrs = bytes
        }
        var debugRegs = Self.zeroed(kvm_debugregs.self)
        try descriptor.kvmIoctl("KVM_GET_DEBUGREGS vCPU \(id)", CKVM_GET_DEBUGREGS, bytes: &debugRegs)
        var lapic = Self.zeroed(kvm_lapic_state.self)
        try descriptor.kvmIoctl("KVM_GET_LAPIC vCPU \(id)", CKVM_GET_LAPIC, bytes: &lapic)
        let msrs = try readableMSRs(stateSupport.msrIndices)
        var events = Self.zeroed(kvm_vcpu_events.self)
        try descriptor.kvmIoctl("KVM_GET_VCPU_EVENTS vCPU \(id)", CKVM_GET_VCPU_EVENTS, bytes: &events)

        return VCPUState(id: id, mpState: mpState, regs: regs, sregs: sregs, fpuFormat: fpuFormat, fpu: fpu,
                         xcrs: xcrs, debugRegs: debugRegs, lapic: lapic, msrs: msrs, events: events)
    }

    /// Loads `state` into this vCPU, which must already have its CPUID set
    /// (KVM checks XSAVE features and MSRs against it). Every size is checked
    /// first, so a state of the wrong shape changes nothing.
    public func restoreState(_ state: VCPUState) throws(KVMError) {
        try checkShape(of: state)
        // Order as Firecracker's restore_state (vstate/vcpu x86_64), for these reasons:
        // - MP state first: it and the later SETs depend on whether this is the BSP.
        // - REGS before SREGS, and both before VCPU_EVENTS: SET_REGS clears a
        //   pending exception, which SET_VCPU_EVENTS (last) puts back; SREGS
        //   carries a pending interrupt that the events then complete.
        // - XSAVE and XCRS after SREGS (CR4.OSXSAVE must be set for XCR0).
        // - LAPIC after SREGS: SET_SREGS writes the APIC base MSR, which
        //   enables (or not) the LAPIC whose page SET_LAPIC then loads.
        // - MSRs after the LAPIC: the TSC-deadline MSR is accepted only with
        //   the LAPIC in TSC-deadline mode, and after the TSC (deferred below).
        var mpState = state.mpState
        try descriptor.kvmIoctl("KVM_SET_MP_STATE vCPU \(id)", CKVM_SET_MP_STATE, bytes: &mpState)
        var regs = state.regs
        try descriptor.kvmIoctl("KVM_SET_REGS vCPU \(id)", CKVM_SET_REGS, bytes: &regs)
        var sregs = state.sregs
        try descriptor.kvmIoctl("KVM_SET_SREGS vCPU \(id)", CKVM_SET_SREGS, bytes: &sregs)
        var fpu = state.fpu
        switch state.fpuFormat {
        case .xsave: try descriptor.kvmIoctl("KVM_SET_XSAVE vCPU \(id)", CKVM_SET_XSAVE, bytes: &fpu)
        case .legacyFPU: try descriptor.kvmIoctl("KVM_SET_FPU vCPU \(id)", CKVM_SET_FPU, bytes: &fpu)
        }
        if var xcrs = state.xcrs {
            try descriptor.kvmIoctl("KVM_SET_XCRS vCPU \(id)", CKVM_SET_XCRS, bytes: &xcrs)
        }
        var debugRegs = state.debugRegs
        try descriptor.kvmIoctl("KVM_SET_DEBUGREGS vCPU \(id)", CKVM_SET_DEBUGREGS, bytes: &debugRegs)
        var lapic = state.lapic
        try descriptor.kvmIoctl("KVM_SET_LAPIC vCPU \(id)", CKVM_SET_LAPIC, bytes: &lapic)
        let msrs = state.msrs.map { (index: $0.index, value: $0.value) }
        let first = msrs.filter { !Self.deferredMSRs.contains($0.index) }
        let deferred = msrs.filter { Self.deferredMSRs.contains($0.index) }
        for start in stride(from: 0, to: first.count, by: Self.msrChunk) {
            try setMSRs(Array(first[start..<min(start + Self.msrChunk, first.count)]))
        }
        if !deferred.isEmpty { try setMSRs(deferred) }
        var events = state.events
        try descriptor.kvmIoctl("KVM_SET_VCPU_EVENTS vCPU \(id)", CKVM_SET_VCPU_EVENTS, bytes: &events)
    }

    /// Refuses a state whose structures this host's KVM would read differently.
    func checkShape(of state: VCPUState) throws(KVMError) {
        func expect(_ part: String, _ bytes: [UInt8], _ size: Int) throws(KVMError) {
            guard bytes.count == size else { throw .stateSizeMismatch(part: "vCPU \(id) \(part)", expected: size, actual: bytes.count) }
        }
        try expect("MP state", state.mpState, MemoryLayout<kvm_mp_state>.size)
        try expect("regs", state.regs, MemoryLayout<kvm_regs>.size)
        try expect("sregs", state.sregs, MemoryLayout<kvm_sregs>.size)
        switch state.fpuFormat {
        case .xsave:
            guard let size = stateSupport.xsaveSize else {
                throw .incompatibleState(part: "vCPU \(id) FPU", reason: "saved as XSAVE, but this host's KVM lacks KVM_CAP_XSAVE")
            }
            try expect("XSAVE area", state.fpu, size)
        case .legacyFPU:
            try expect("FPU", state.fpu, MemoryLayout<kvm_fpu>.size)
        }
        if let xcrs = state.xcrs {
            guard stateSupport.hasXCRs else {
                throw .incompatibleState(part: "vCPU \(id) XCRs", reason: "saved, but this host's KVM lacks KVM_CAP_XCRS")
            }
            try expect("XCRs", xcrs, MemoryLayout<kvm_xcrs>.size)
        }
        try expect("debug registers", state.debugRegs, MemoryLayout<kvm_debugregs>.size)
        try expect("LAPIC", state.lapic, MemoryLayout<kvm_lapic_state>.size)
        try expect("vCPU events", state.events, MemoryLayout<kvm_vcpu_events>.size)
    }

    /// Reads `indices` with KVM_GET_MSRS. It reads in order and stops at the
    /// first MSR it cannot read for this vCPU (CPUID hides the feature, say):
    /// that one is left out and the read goes on after it.
    func readableMSRs(_ indices: [UInt32]) throws(KVMError) -> [VCPUState.MSREntry] {
        var result: [VCPUState.MSREntry] = []
        var remaining = indices[...]
        while !remaining.isEmpty {
            let chunk = Array(remaining.prefix(Self.msrChunk))
            let read = try getMSRs(chunk)
            result += read
            // The one after those read was refused: skip it.
            remaining = remaining.dropFirst(read.count < chunk.count ? read.count + 1 : chunk.count)
        }
        return result
    }

    /// One KVM_GET_MSRS: the leading entries of `indices` KVM could read.
    func getMSRs(_ indices: [UInt32]) throws(KVMError) -> [VCPUState.MSREntry] {
        let header = Int(ckvm_msrs_header_size())
        let stride = MemoryLayout<kvm_msr_entry>.stride
        let size = header + indices.count * stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { raw.deallocate() }
        // SAFETY: the header and every entry are written inside the allocation sized for them.
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        raw.storeBytes(of: UInt32(indices.count), as: UInt32.self)
        for (position, index) in indices.enumerated() {
            var entry = kvm_msr_entry()
            entry.index = index
            raw.storeBytes(of: entry, toByteOffset: header + position * stride, as: kvm_msr_entry.self)
        }
        let read = Int(try descriptor.kvmIoctl("KVM_GET_MSRS vCPU \(id)", CKVM_GET_MSRS, buffer: raw))
        // SAFETY: the kernel filled the first `read` entries (bounded by the count it was given).
        return (0..<min(max(read, 0), indices.count)).map { position in
            let entry = raw.load(fromByteOffset: header + position * stride, as: kvm_msr_entry.self)
            return VCPUState.MSREntry(index: entry.index, value: entry.data)
        }
    }

    static func zeroed<T>(_ type: T.Type) -> [UInt8] {
        [UInt8](repeating: 0, count: MemoryLayout<T>.size)
    }
}
