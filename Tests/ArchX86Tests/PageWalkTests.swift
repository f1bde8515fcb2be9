import Testing
@testable import ArchX86
@testable import GuestMemory

@Suite("Page walk for crash reports")
struct PageWalkTests {
    @Test("without paging, linear addresses are physical (32-bit)")
    func pagingOff() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)])
        let state = PageWalk.PagingState(cr0: 0x11, cr3: 0, cr4: 0, efer: 0)
        #expect(PageWalk.translate(0x1_0000_1234, state: state, memory: memory) == GuestAddress(0x1234))
    }

    @Test("4-level walk through the identity tables, 2 MiB pages and 4 KiB pages")
    func longMode() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 16 << 20)])
        let cr3 = try IdentityPageTables.write(into: memory)
        let state = PageWalk.PagingState(cr0: 0x8000_0011, cr3: cr3, cr4: 1 << 5, efer: 0x500)
        #expect(PageWalk.translate(0x12_3456, state: state, memory: memory) == GuestAddress(0x12_3456))
        // Map linear 0xFFFF_8000_0000_0000 + 0x5000 to physical 0x40_0000 through a 4 KiB page table.
        let linear: UInt64 = 0xFFFF_8000_0000_5000
        let pml4Index = (linear >> 39) & 0x1FF
        try memory.write(UInt64(0x10_0000 | 3), at: GuestAddress(cr3 + pml4Index * 8))
        try memory.write(UInt64(0x10_1000 | 3), at: GuestAddress(0x10_0000))       // PDPT[0]
        try memory.write(UInt64(0x10_2000 | 3), at: GuestAddress(0x10_1000))       // PD[0]
        try memory.write(UInt64(0x40_0000 | 3), at: GuestAddress(0x10_2000 + 5 * 8)) // PT[5]
        #expect(PageWalk.translate(linear + 0x123, state: state, memory: memory) == GuestAddress(0x40_0123))
    }

    @Test("a non-present entry or a table outside RAM gives nil, not a crash")
    func broken() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 1 << 20)])
        let outside = PageWalk.PagingState(cr0: 0x8000_0011, cr3: 0x7000_0000, cr4: 1 << 5, efer: 0x500)
        #expect(PageWalk.translate(0x1000, state: outside, memory: memory) == nil)
        let empty = PageWalk.PagingState(cr0: 0x8000_0011, cr3: 0x1000, cr4: 1 << 5, efer: 0x500)
        #expect(PageWalk.translate(0x1000, state: empty, memory: memory) == nil)
    }
}
