import CKVM

/// One CPUID leaf/subleaf with its four result registers, as KVM sees it.
public struct CPUIDEntry: Equatable, Sendable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }

    init(_ raw: kvm_cpuid_entry2) {
        self.init(function: raw.function, index: raw.index, flags: raw.flags, eax: raw.eax, ebx: raw.ebx, ecx: raw.ecx, edx: raw.edx)
    }

    var raw: kvm_cpuid_entry2 {
        var entry = kvm_cpuid_entry2()
        entry.function = function
        entry.index = index
        entry.flags = flags
        entry.eax = eax
        entry.ebx = ebx
        entry.ecx = ecx
        entry.edx = edx
        return entry
    }
}

/// A `struct kvm_cpuid2` with room for `capacity` entries, for the
/// variable-length CPUID ioctls.
struct CPUIDList {
    private var storage: [UInt8]
    private let capacity: Int
    private static let header = Int(ckvm_cpuid2_header_size())
    private static let stride = MemoryLayout<kvm_cpuid_entry2>.stride

    init(capacity: Int) {
        self.capacity = capacity
        storage = [UInt8](repeating: 0, count: Self.header + capacity * Self.stride)
        // SAFETY: storage is at least header-sized; nent is the first u32.
        storage.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(capacity), as: UInt32.self) }
    }

    init(entries: [CPUIDEntry]) {
        self.init(capacity: entries.count)
        // SAFETY: each entry is stored inside the capacity reserved above.
        storage.withUnsafeMutableBytes { raw in
            for (position, entry) in entries.enumerated() {
                raw.storeBytes(of: entry.raw, toByteOffset: Self.header + position * Self.stride, as: kvm_cpuid_entry2.self)
            }
        }
    }

    var entries: [CPUIDEntry] {
        // SAFETY: nent was bounded by the kernel to at most capacity.
        storage.withUnsafeBytes { raw in
            let count = min(Int(raw.load(as: UInt32.self)), capacity)
            return (0..<count).map {
                CPUIDEntry(raw.loadUnaligned(fromByteOffset: Self.header + $0 * Self.stride, as: kvm_cpuid_entry2.self))
            }
        }
    }

    mutating func withRawBuffer<R>(_ body: (UnsafeMutableRawPointer) throws(KVMError) -> R) throws(KVMError) -> R {
        // SAFETY: the pointer is used only during the ioctl and the storage outlives it.
        try storage.withUnsafeMutableBytes { raw in
            Result { () throws(KVMError) in
                // An empty kvm_cpuid2 still has a header, so baseAddress is never nil.
                guard let base = raw.baseAddress else { throw KVMError.missingCapability(name: "CPUID buffer") }
                return try body(base)
            }
        }.get()
    }
}
