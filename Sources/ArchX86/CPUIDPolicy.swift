import KVM

/// What the guest sees through CPUID: the host's KVM-supported leaves, with
/// per-vCPU topology, the hypervisor bit and KVM signature, and without
/// features that would trap guests on hosts like ours.
public struct CPUIDPolicy: Sendable {
    public var cpuCount: Int

    /// KVM paravirtual features (leaf 0x40000001 EAX) offered to guests. PV
    /// IPIs, PV unhalt and PV sched-yield are left out: they rely on hypercalls,
    /// which hang on nested hosts such as kvm_pvm.
    public static let offeredKVMFeatures: UInt32 =
        (1 << 0)      // KVM_FEATURE_CLOCKSOURCE
        | (1 << 1)    // KVM_FEATURE_NOP_IO_DELAY
        | (1 << 3)    // KVM_FEATURE_CLOCKSOURCE2
        | (1 << 24)   // KVM_FEATURE_CLOCKSOURCE_STABLE_BIT

    public init(cpuCount: Int) { self.cpuCount = cpuCount }

    /// The leaves for vCPU `vcpuID`, derived from `supported`.
    public func entries(for vcpuID: Int, supported: [CPUIDEntry]) -> [CPUIDEntry] {
        let apicID = UInt32(vcpuID)
        let threadsPerPackage = UInt32(cpuCount)
        // Bits needed to number the vCPUs in the x2APIC topology leaves.
        let idShift = UInt32(cpuCount <= 1 ? 0 : (UInt32(cpuCount - 1).bitWidth - UInt32(cpuCount - 1).leadingZeroBitCount))
        var result: [CPUIDEntry] = []
        for var entry in supported {
            switch entry.function {
            case 0x1:
                // Initial APIC ID, logical processor count, CLFLUSH size 8×8 bytes.
                entry.ebx = (apicID << 24) | (min(threadsPerPackage, 255) << 16) | (8 << 8) | (entry.ebx & 0xFF)
                entry.ecx |= 1 << 31  // running under a hypervisor
                if cpuCount > 1 { entry.edx |= 1 << 28 }  // HTT: several logical CPUs
            case 0x4:
                // Cores per package - 1 in EAX[31:26]; one vCPU per core.
                entry.eax = (entry.eax & 0x03FF_FFFF) | ((threadsPerPackage - 1) << 26)
                // Caches are shared by all vCPUs of the package.
                let level = (entry.eax >> 5) & 0x7
                if level > 0 { entry.eax = (entry.eax & ~(0xFFF << 14)) | ((threadsPerPackage - 1) << 14) }
            case 0x6:
                // No thermal or power management to offer.
                entry.eax = 0; entry.ebx = 0; entry.ecx = 0; entry.edx = 0
            case 0xA:
                // No virtual PMU: perf counters would trap on every access.
                entry.eax = 0; entry.ebx = 0; entry.ecx = 0; entry.edx = 0
            case 0xB, 0x1F:
                // x2APIC topology: level 0 = SMT (1 thread), level 1 = core.
                entry.edx = apicID
                switch entry.index {
                case 0:
                    entry.eax = 0; entry.ebx = 1; entry.ecx = (1 << 8) | 0
                case 1:
                    entry.eax = idShift; entry.ebx = threadsPerPackage; entry.ecx = (2 << 8) | 1
                default:
                    entry.eax = 0; entry.ebx = 0; entry.ecx = entry.index
                }
            case 0x4000_0000:
                // "KVMKVMKVM\0\0\0": lets Linux use kvm-clock.
                entry.eax = 0x4000_0001
                entry.ebx = 0x4B4D_564B
                entry.ecx = 0x564B_4D56
                entry.edx = 0x4D
            case 0x4000_0001:
                entry.eax &= Self.offeredKVMFeatures
                entry.ebx = 0; entry.ecx = 0; entry.edx = 0
            case 0x8000_0008:
                // XSAVEERPTR: tells Linux FXSAVE saves the error pointers, so it
                // skips the AMD leak workaround (fnclex/fild), which emulators lack.
                entry.ebx |= 1 << 2
            default:
                break
            }
            result.append(entry)
        }
        if !result.contains(where: { $0.function == 0x4000_0000 }) {
            result.append(CPUIDEntry(function: 0x4000_0000, eax: 0x4000_0001, ebx: 0x4B4D_564B, ecx: 0x564B_4D56, edx: 0x4D))
            result.append(CPUIDEntry(function: 0x4000_0001, eax: Self.offeredKVMFeatures))
        }
        return result
    }
}
