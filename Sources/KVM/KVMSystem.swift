import CKVM
import Glibc
import HostSystem

/// The KVM subsystem (/dev/kvm): capability checks, host CPUID, VM creation.
public final class KVMSystem: Sendable {
    public let descriptor: OwnedFileDescriptor
    /// Size of each vCPU's shared `kvm_run` area.
    public let vcpuMapSize: Int

    /// Capabilities without which Swiftlet cannot run a guest.
    static let requiredCapabilities: [(Int32, String)] = [
        (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
        (KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"),
        (KVM_CAP_PIT2, "KVM_CAP_PIT2"),
        (KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"),
        (KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"),
        (KVM_CAP_IRQFD, "KVM_CAP_IRQFD"),
        (KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"),
        (KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"),
    ]

    public init(path: String = "/dev/kvm") throws(KVMError) {
        do {
            descriptor = try OwnedFileDescriptor.open(path, flags: O_RDWR)
        } catch {
            throw .openDevice(path: path, cause: error)
        }
        let version = try descriptor.kvmIoctl("KVM_GET_API_VERSION", CKVM_GET_API_VERSION)
        guard version == KVM_API_VERSION else { throw .unsupportedAPIVersion(version) }
        for (capability, name) in Self.requiredCapabilities {
            guard try descriptor.kvmIoctl("KVM_CHECK_EXTENSION \(name)", CKVM_CHECK_EXTENSION, value: UInt(capability)) > 0 else {
                throw .missingCapability(name: name)
            }
        }
        vcpuMapSize = Int(try descriptor.kvmIoctl("KVM_GET_VCPU_MMAP_SIZE", CKVM_GET_VCPU_MMAP_SIZE))
    }

    /// Value of KVM_CHECK_EXTENSION for `capability` (0 when absent).
    public func checkExtension(_ capability: Int32) -> Int32 {
        (try? descriptor.ioctl("KVM_CHECK_EXTENSION", CKVM_CHECK_EXTENSION, value: UInt(capability))) ?? 0
    }

    /// The most vCPUs one VM may have on this host.
    public var maxVCPUs: Int {
        let maximum = checkExtension(KVM_CAP_MAX_VCPUS)
        return Int(maximum > 0 ? maximum : max(checkExtension(KVM_CAP_NR_VCPUS), 4))
    }

    /// CPUID leaves the host's KVM can virtualize (KVM_GET_SUPPORTED_CPUID).
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        var capacity = 128
        while true {
            var list = CPUIDList(capacity: capacity)
            do {
                _ = try list.withRawBuffer { (raw) throws(KVMError) in
                    try descriptor.kvmIoctl("KVM_GET_SUPPORTED_CPUID", CKVM_GET_SUPPORTED_CPUID, buffer: raw)
                }
                return list.entries
            } catch let KVMError.systemCall(_, cause) where cause.errno.rawValue == E2BIG && capacity < 4096 {
                capacity *= 2
            }
        }
    }

    /// MSR indices KVM saves and restores (KVM_GET_MSR_INDEX_LIST).
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        let header = Int(ckvm_msr_list_header_size())
        let capacity = 1024
        let raw = UnsafeMutableRawPointer.allocate(byteCount: header + capacity * 4, alignment: 8)
        defer { raw.deallocate() }
        // SAFETY: the buffer holds a kvm_msr_list header and `capacity` indices.
        raw.storeBytes(of: UInt32(capacity), as: UInt32.self)
        try descriptor.kvmIoctl("KVM_GET_MSR_INDEX_LIST", CKVM_GET_MSR_INDEX_LIST, buffer: raw)
        let count = min(Int(raw.load(as: UInt32.self)), capacity)
        // SAFETY: the kernel wrote `count` UInt32 indices after the header.
        return (0..<count).map { raw.load(fromByteOffset: header + $0 * 4, as: UInt32.self) }
    }

    /// Creates an empty VM.
    public func createVM() throws(KVMError) -> VirtualMachineHandle {
        let fd = try descriptor.kvmIoctl("KVM_CREATE_VM", CKVM_CREATE_VM, value: 0)
        return VirtualMachineHandle(system: self, descriptor: OwnedFileDescriptor(adopting: fd))
    }
}
