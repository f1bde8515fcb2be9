import GuestMemory

/// Translates a guest linear address the way the MMU would, for diagnostics
/// (showing the instruction bytes at a crashed vCPU's RIP). Reads guest page
/// tables through bounds-checked accessors; a bad table gives nil.
public enum PageWalk {
    /// The paging mode state needed for a walk.
    public struct PagingState: Sendable {
        public var cr0: UInt64
        public var cr3: UInt64
        public var cr4: UInt64
        public var efer: UInt64
        public init(cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64) {
            self.cr0 = cr0
            self.cr3 = cr3
            self.cr4 = cr4
            self.efer = efer
        }
    }

    static let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000

    public static func translate(_ linear: UInt64, state: PagingState, memory: GuestMemory) -> GuestAddress? {
        let pagingEnabled = state.cr0 & (1 << 31) != 0
        guard pagingEnabled else { return GuestAddress(linear & 0xFFFF_FFFF) }
        let longMode = state.efer & (1 << 10) != 0
        let pae = state.cr4 & (1 << 5) != 0
        guard longMode && pae else {
            // 32-bit paging without PAE: two levels of 4-byte entries.
            guard !pae else { return nil }
            return walk32(linear, cr3: state.cr3, memory: memory)
        }
        let fiveLevel = state.cr4 & (1 << 12) != 0
        var table = state.cr3 & addressMask
        let levels = fiveLevel ? [48, 39, 30, 21, 12] : [39, 30, 21, 12]
        for (depth, shift) in levels.enumerated() {
            let index = (linear >> UInt64(shift)) & 0x1FF
            guard let entry = try? memory.read(UInt64.self, at: GuestAddress(table + index * 8)), entry & 1 != 0 else { return nil }
            let isLast = depth == levels.count - 1
            // 1 GiB or 2 MiB page: PS bit at the PDPT or PD level.
            if !isLast && shift <= 30 && entry & (1 << 7) != 0 {
                let pageMask = (UInt64(1) << UInt64(shift)) - 1
                return GuestAddress((entry & addressMask & ~pageMask) | (linear & pageMask))
            }
            table = entry & addressMask
        }
        return GuestAddress(table | (linear & 0xFFF))
    }

    private static func walk32(_ linear: UInt64, cr3: UInt64, memory: GuestMemory) -> GuestAddress? {
        let directory = cr3 & 0xFFFF_F000
        guard let pde = try? memory.read(UInt32.self, at: GuestAddress(directory + ((linear >> 22) & 0x3FF) * 4)), pde & 1 != 0 else { return nil }
        if pde & (1 << 7) != 0 { return GuestAddress(UInt64(pde & 0xFFC0_0000) | (linear & 0x3F_FFFF)) }
        let table = UInt64(pde & 0xFFFF_F000)
        guard let pte = try? memory.read(UInt32.self, at: GuestAddress(table + ((linear >> 12) & 0x3FF) * 4)), pte & 1 != 0 else { return nil }
        return GuestAddress(UInt64(pte & 0xFFFF_F000) | (linear & 0xFFF))
    }
}
