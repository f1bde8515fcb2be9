import CKVM
import KVM

/// The CPU state a kernel's entry point expects.
public enum EntryState: Sendable, Equatable {
    /// PVH: 32-bit protected mode, paging off, EBX = start info.
    case protectedMode32(entry: UInt64, startInfo: UInt64)
    /// Linux 64-bit boot protocol: long mode with identity paging, RSI = zero page.
    case longMode64(entry: UInt64, zeroPage: UInt64, pageTableRoot: UInt64)
}

/// Brings a vCPU to its reset-plus-firmware state: CPUID, MSRs, FPU, LAPIC,
/// and for the boot vCPU the registers of the kernel entry.
public enum VCPUSetup {
    static let msrIA32TSC: UInt32 = 0x10
    static let msrIA32MiscEnable: UInt32 = 0x1A0
    static let msrMTRRDefType: UInt32 = 0x2FF
    static let msrSysenterCS: UInt32 = 0x174
    static let msrSysenterESP: UInt32 = 0x175
    static let msrSysenterEIP: UInt32 = 0x176
    static let msrSTAR: UInt32 = 0xC000_0081
    static let msrLSTAR: UInt32 = 0xC000_0082
    static let msrCSTAR: UInt32 = 0xC000_0083
    static let msrSyscallMask: UInt32 = 0xC000_0084
    static let msrKernelGSBase: UInt32 = 0xC000_0102

    /// MSR values at boot: syscall MSRs cleared, fast strings on, MTRRs
    /// enabled with write-back default so the guest caches its RAM.
    public static let bootMSRs: [(index: UInt32, value: UInt64)] = [
        (msrSysenterCS, 0), (msrSysenterESP, 0), (msrSysenterEIP, 0),
        (msrSTAR, 0), (msrCSTAR, 0), (msrKernelGSBase, 0), (msrSyscallMask, 0), (msrLSTAR, 0),
        (msrIA32TSC, 0),
        (msrIA32MiscEnable, 1),
        (msrMTRRDefType, (1 << 11) | 6),
    ]

    /// CPUID, MSRs, FPU and LAPIC for any vCPU.
    public static func configure(_ vcpu: VCPUHandle, cpuid: [CPUIDEntry]) throws(KVMError) {
        try vcpu.setCPUID(cpuid)
        try vcpu.setMSRs(bootMSRs)
        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        try vcpu.setFPU(fpu)
        try configureLocalAPIC(vcpu)
    }

    /// LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as firmware leaves them.
    static func configureLocalAPIC(_ vcpu: VCPUHandle) throws(KVMError) {
        var state = try vcpu.localAPIC()
        let lvt0: Int = 0x350, lvt1: Int = 0x360
        // SAFETY: regs is the 1 KiB APIC register page; both offsets are inside it.
        withUnsafeMutableBytes(of: &state.regs) { registers in
            let extINT: UInt32 = 7 << 8, nmi: UInt32 = 4 << 8
            let oldLVT0 = registers.loadUnaligned(fromByteOffset: lvt0, as: UInt32.self)
            registers.storeBytes(of: (oldLVT0 & ~0x700) | extINT, toByteOffset: lvt0, as: UInt32.self)
            let oldLVT1 = registers.loadUnaligned(fromByteOffset: lvt1, as: UInt32.self)
            registers.storeBytes(of: (oldLVT1 & ~0x700) | nmi, toByteOffset: lvt1, as: UInt32.self)
        }
        try vcpu.setLocalAPIC(state)
    }

    /// Sets the boot vCPU's registers for `entry`.
    public static func setEntryRegisters(_ vcpu: VCPUHandle, entry: EntryState) throws(KVMError) {
        var sregs = try vcpu.specialRegisters()
        sregs.gdt.base = Layout.gdtStart.rawValue
        sregs.gdt.limit = UInt16(BootGDT.descriptors.count * 8 - 1)
        sregs.idt.base = Layout.idtStart.rawValue
        sregs.idt.limit = 7
        let data = kvmSegment(BootGDT.segment(index: 3))
        sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
        sregs.tr = kvmSegment(BootGDT.segment(index: 4))

        var regs = kvm_regs()
        regs.rflags = 0x2
        switch entry {
        case let .protectedMode32(entryPoint, startInfo):
            sregs.cs = kvmSegment(BootGDT.segment(index: 2))
            sregs.cr0 = 0x11            // PE | ET
            sregs.cr4 = 0
            sregs.efer = 0
            regs.rip = entryPoint
            regs.rbx = startInfo
        case let .longMode64(entryPoint, zeroPage, pageTableRoot):
            sregs.cs = kvmSegment(BootGDT.segment(index: 1))
            sregs.cr3 = pageTableRoot
            sregs.cr4 = 1 << 5          // PAE
            sregs.cr0 = 0x8000_0011     // PG | ET | PE
            sregs.efer = (1 << 8) | (1 << 10)  // LME | LMA
            regs.rip = entryPoint
            regs.rsi = zeroPage
            regs.rsp = Layout.bootStackPointer.rawValue
            regs.rbp = Layout.bootStackPointer.rawValue
        }
        try vcpu.setSpecialRegisters(sregs)
        try vcpu.setRegisters(regs)
    }

    static func kvmSegment(_ segment: SegmentDescriptor) -> kvm_segment {
        var result = kvm_segment()
        result.base = segment.base
        result.limit = segment.limit
        result.selector = segment.selector
        result.type = segment.type
        result.present = segment.present
        result.dpl = segment.dpl
        result.db = segment.db
        result.s = segment.s
        result.l = segment.l
        result.g = segment.g
        result.avl = segment.avl
        result.unusable = segment.present == 0 ? 1 : 0
        return result
    }
}
