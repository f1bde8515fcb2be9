import GuestMemory

/// Identity page tables for a 64-bit entry: PML4 → one PDPT → one PD per GiB
/// of 2 MiB pages, covering `Layout.identityMappedSize`.
public enum IdentityPageTables {
    static let present: UInt64 = 1 << 0
    static let writable: UInt64 = 1 << 1
    static let largePage: UInt64 = 1 << 7
    static let twoMiB: UInt64 = 2 << 20

    /// Number of page directories needed to map `size` bytes.
    static func directoryCount(for size: UInt64) -> Int { Int((size + (1 << 30) - 1) >> 30) }

    /// The entries to write, as (address, value) pairs; pure so it can be tested.
    public static func entries(mappedSize: UInt64 = Layout.identityMappedSize) -> [(GuestAddress, UInt64)] {
        var result: [(GuestAddress, UInt64)] = [(Layout.pml4Start, Layout.pdptStart.rawValue | present | writable)]
        for directory in 0..<directoryCount(for: mappedSize) {
            let pd = Layout.pdStart + UInt64(directory) * 0x1000
            result.append((Layout.pdptStart + UInt64(directory * 8), pd.rawValue | present | writable))
            for entry in 0..<512 {
                let physical = (UInt64(directory) << 30) + UInt64(entry) * twoMiB
                result.append((pd + UInt64(entry * 8), physical | present | writable | largePage))
            }
        }
        return result
    }

    /// Writes the tables into guest memory; returns the value for CR3.
    @discardableResult
    public static func write(into memory: GuestMemory) throws(GuestMemoryError) -> UInt64 {
        for (address, value) in entries() {
            try memory.write(value, at: address)
        }
        return Layout.pml4Start.rawValue
    }
}
