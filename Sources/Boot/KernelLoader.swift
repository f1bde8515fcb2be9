import GuestMemory

/// A kernel placed in guest memory, and how the VMM must start it.
public struct LoadedKernel: Equatable, Sendable {
    /// How the boot vCPU enters the kernel; each kind needs different CPU state.
    public enum Entry: Equatable, Sendable {
        /// ELF with a XEN_ELFNOTE_PHYS32_ENTRY note: 32-bit protected mode,
        /// paging off, EBX = guest address of `hvm_start_info`.
        case pvh(entry32: GuestAddress)
        /// bzImage: 64-bit long mode with identity paging, RSI = guest address
        /// of the zero page built from `setupHeader`.
        case linux64(entry: GuestAddress, setupHeader: SetupHeader)
        /// ELF without a PVH note: jump to e_entry in 64-bit long mode (our
        /// freestanding test programs); no boot protocol is implied.
        case elf64(entry: GuestAddress)
    }

    public let entry: Entry
    /// Lowest guest address the kernel occupies.
    public let loadAddress: GuestAddress
    /// First guest address past everything the kernel occupies (bss, and for
    /// a bzImage its init_size): the initrd and other data must go above it.
    public let kernelEnd: GuestAddress

    public init(entry: Entry, loadAddress: GuestAddress, kernelEnd: GuestAddress) {
        self.entry = entry
        self.loadAddress = loadAddress
        self.kernelEnd = kernelEnd
    }

    /// The bzImage setup header the zero page is built from, if this is a bzImage.
    public var setupHeader: SetupHeader? {
        if case let .linux64(_, header) = entry { return header }
        return nil
    }
}

/// Loads a kernel image of either supported format, chosen by its magic bytes.
public enum KernelLoader {
    /// Detects ELF (vmlinux, test programs) or bzImage and loads it into `memory`.
    /// Nothing the kernel occupies may start below `highMemoryStart`, which keeps
    /// it off the VMM's low-memory boot structures.
    public static func load(
        image: [UInt8], into memory: GuestMemory, highMemoryStart: GuestAddress
    ) throws(BootError) -> LoadedKernel {
        if image.starts(with: ELFLoader.magic) {
            return try ELFLoader.load(image: image, into: memory, highMemoryStart: highMemoryStart)
        }
        if BzImageLoader.looksLikeBzImage(image) {
            return try BzImageLoader.load(image: image, into: memory, highMemoryStart: highMemoryStart)
        }
        throw .unrecognizedImage(firstBytes: Array(image.prefix(8)))
    }
}
