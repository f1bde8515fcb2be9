import CKVM
import Glibc
import HostSystem

/// A KVM virtual machine (the fd KVM_CREATE_VM returns).
public final class VirtualMachineHandle: Sendable {
    public let system: KVMSystem
    public let descriptor: OwnedFileDescriptor

    init(system: KVMSystem, descriptor: OwnedFileDescriptor) {
        self.system = system
        self.descriptor = descriptor
    }

    /// Gives the guest `size` bytes of host memory at guest physical
    /// `guestAddress`; with `logDirtyPages`, KVM records the pages the guest
    /// writes (`dirtyLog`).
    public func setUserMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64, hostAddress: UnsafeMutableRawPointer,
                                    logDirtyPages: Bool = false) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: logDirtyPages ? UInt32(CKVM_MEM_LOG_DIRTY_PAGES) : 0, guest_phys_addr: guestAddress, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: hostAddress)))
        try descriptor.kvmIoctl("KVM_SET_USER_MEMORY_REGION slot \(slot)", CKVM_SET_USER_MEMORY_REGION, pointer: &region)
    }

    /// The pages of `slot` (of `size` bytes) the guest wrote since the last
    /// call, one bit per 4 KiB page, in 64-bit words; KVM clears its log.
    /// The slot must have been made with `logDirtyPages`.
    public func dirtyLog(slot: UInt32, size: UInt64) throws(KVMError) -> [UInt64] {
        let pages = Int((size + 4095) / 4096)
        let count = max((pages + 63) / 64, 1)
        let bitmap = UnsafeMutablePointer<UInt64>.allocate(capacity: count)
        defer { bitmap.deallocate() }
        bitmap.initialize(repeating: 0, count: count)
        // SAFETY: the bitmap holds a bit for every page of the slot, rounded up to 64 bits as KVM writes it.
        var log = ckvm_dirty_log(slot, UnsafeMutableRawPointer(bitmap))
        try descriptor.kvmIoctl("KVM_GET_DIRTY_LOG slot \(slot)", CKVM_GET_DIRTY_LOG, pointer: &log)
        return Array(UnsafeBufferPointer(start: bitmap, count: count))
    }

    /// Three pages KVM uses for the TSS of real-mode emulation (Intel).
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        try descriptor.kvmIoctl("KVM_SET_TSS_ADDR", CKVM_SET_TSS_ADDR, value: UInt(address))
    }

    /// One page KVM uses for real-mode identity paging (Intel).
    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var value = address
        try descriptor.kvmIoctl("KVM_SET_IDENTITY_MAP_ADDR", CKVM_SET_IDENTITY_MAP_ADDR, pointer: &value)
    }

    /// In-kernel PIC, IO-APIC and local APICs.
    public func createInterruptController() throws(KVMError) {
        try descriptor.kvmIoctl("KVM_CREATE_IRQCHIP", CKVM_CREATE_IRQCHIP)
    }

    /// In-kernel i8254 PIT (speaker port dummy included).
    public func createPIT() throws(KVMError) {
        var config = kvm_pit_config()
        config.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        try descriptor.kvmIoctl("KVM_CREATE_PIT2", CKVM_CREATE_PIT2, pointer: &config)
    }

    /// Sets the level of interrupt line `gsi` (edge devices pulse 1 then 0).
    public func setInterruptLine(_ gsi: UInt32, level: Bool) throws(KVMError) {
        var line = kvm_irq_level()
        line.irq = gsi
        line.level = level ? 1 : 0
        try descriptor.kvmIoctl("KVM_IRQ_LINE \(gsi)", CKVM_IRQ_LINE, pointer: &line)
    }

    /// Routes writes to `eventFD` to interrupt line `gsi` inside the kernel.
    public func registerIRQFD(_ eventFD: EventFD, gsi: UInt32) throws(KVMError) {
        var request = kvm_irqfd()
        request.fd = UInt32(bitPattern: eventFD.descriptor.rawValue)
        request.gsi = gsi
        try descriptor.kvmIoctl("KVM_IRQFD gsi \(gsi)", CKVM_IRQFD, pointer: &request)
    }

    /// Makes guest writes of `length` bytes to `address` signal `eventFD`
    /// without leaving the kernel; with `datamatch`, only writes of that
    /// value (several eventfds may then share one address, as virtio-mmio's
    /// QueueNotify does, one per queue index).
    public func registerIOEventFD(_ eventFD: EventFD, address: UInt64, length: UInt32, isPortIO: Bool,
                                  datamatch: UInt64? = nil) throws(KVMError) {
        var request = Self.ioEventFDRequest(eventFD, address: address, length: length, isPortIO: isPortIO, datamatch: datamatch)
        try descriptor.kvmIoctl("KVM_IOEVENTFD at 0x\(String(address, radix: 16))", CKVM_IOEVENTFD, pointer: &request)
    }

    static func ioEventFDRequest(_ eventFD: EventFD, address: UInt64, length: UInt32, isPortIO: Bool, datamatch: UInt64?) -> kvm_ioeventfd {
        var request = kvm_ioeventfd()
        request.addr = address
        request.len = length
        request.fd = eventFD.descriptor.rawValue
        request.flags = isPortIO ? CKVM_IOEVENTFD_FLAG_PIO : 0
        if let datamatch {
            request.datamatch = datamatch
            request.flags |= CKVM_IOEVENTFD_FLAG_DATAMATCH
        }
        return request
    }

    /// Creates vCPU `id` with its shared run area mapped.
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPUHandle {
        let fd = OwnedFileDescriptor(adopting: try descriptor.kvmIoctl("KVM_CREATE_VCPU \(id)", CKVM_CREATE_VCPU, value: UInt(id)))
        let runArea: MemoryMapping
        do {
            runArea = try MemoryMapping(sharedFile: fd, size: system.vcpuMapSize)
        } catch {
            throw .systemCall(step: "mmap kvm_run of vCPU \(id)", cause: error)
        }
        return VCPUHandle(id: id, descriptor: fd, runArea: runArea, stateSupport: try stateSupport())
    }

    /// The formats of this host's vCPU state (see VCPUState).
    func stateSupport() throws(KVMError) -> VCPUStateSupport {
        let xsave2Size = Int(checkExtension(KVM_CAP_XSAVE2))
        let xsaveSize: Int? = checkExtension(KVM_CAP_XSAVE) > 0
            ? max(MemoryLayout<kvm_xsave>.size, xsave2Size) : nil
        let listed = try system.msrIndexList()
        let extra = Self.unlistedMSRs.filter { !listed.contains($0) }
        return VCPUStateSupport(xsaveSize: xsaveSize, hasXSAVE2: xsave2Size > 0, hasXCRs: checkExtension(KVM_CAP_XCRS) > 0,
                                msrIndices: listed + extra)
    }

    /// MSRs KVM keeps per vCPU but leaves out of KVM_GET_MSR_INDEX_LIST: the
    /// MTRRs (default type, fixed ranges, 8 variable pairs), which the VCPU
    /// set-up and the guest write. Those this host cannot read are skipped.
    static let unlistedMSRs: [UInt32] = [0x2FF, 0x250, 0x258, 0x259] + Array(0x268...0x26F) + Array(0x200...0x20F)
}
