import KVM
import Testing
@testable import ArchX86
@testable import GuestMemory

@Suite("x86 boot structures")
struct ArchX86Tests {
    @Test("GDT descriptors encode as the architecture defines them")
    func gdtEncoding() {
        let table = BootGDT.table
        #expect(table[0] == 0)
        #expect(table[1] == 0x00AF_9B00_0000_FFFF)   // 64-bit code
        #expect(table[2] == 0x00CF_9B00_0000_FFFF)   // 32-bit code
        #expect(table[3] == 0x00CF_9300_0000_FFFF)   // data
        let code64 = BootGDT.segment(index: 1)
        #expect(code64.l == 1 && code64.db == 0 && code64.selector == 0x08 && code64.limit == 0xFFFF_FFFF)
        let code32 = BootGDT.segment(index: 2)
        #expect(code32.l == 0 && code32.db == 1 && code32.type == 0xB)
    }

    @Test("identity page tables map 4 GiB with 2 MiB pages")
    func pageTables() throws {
        let memory = try GuestMemory(ranges: [(GuestAddress(0), 16 << 20)])
        let cr3 = try IdentityPageTables.write(into: memory)
        #expect(cr3 == Layout.pml4Start.rawValue)
        #expect(try memory.read(UInt64.self, at: Layout.pml4Start) == Layout.pdptStart.rawValue | 0x3)
        #expect(try memory.read(UInt64.self, at: Layout.pdptStart + 8 * 3) == (Layout.pdStart + 0x3000).rawValue | 0x3)
        #expect(try memory.read(UInt64.self, at: Layout.pdptStart + 8 * 4) == 0)
        // Last 2 MiB page below 4 GiB.
        #expect(try memory.read(UInt64.self, at: Layout.pdStart + 0x3000 + 511 * 8) == (0xFFE0_0000 | 0x83))
        #expect(try memory.read(UInt64.self, at: Layout.pdStart + 8) == (0x20_0000 | 0x83))
    }

    @Test("layout keeps boot structures apart and below the EBDA")
    func layoutOrdering() {
        let pageTableEnd = Layout.pdStart + UInt64(IdentityPageTables.directoryCount(for: Layout.identityMappedSize)) * 0x1000
        #expect(pageTableEnd <= Layout.commandLineStart)
        #expect(Layout.pvhMemoryMap + UInt64(Layout.pvhMemoryMapMaxEntries * 24) <= Layout.zeroPage)
        #expect(Layout.zeroPage + 0x1000 <= Layout.bootStackPointer)
        #expect(Layout.commandLineStart + UInt64(Layout.commandLineMaxSize) <= Layout.ebdaStart)
        #expect(Layout.acpiTablesEnd <= Layout.highMemoryStart)
        #expect(Layout.pciECAMStart.rawValue + Layout.pciECAMSize <= Layout.ioAPICStart.rawValue)
    }

    @Test("the 32-bit hole holds the PCI window, the boot timer, then the virtio-mmio pages, then ECAM, without overlap")
    func mmioHoleLayout() throws {
        #expect(Layout.pciMMIO32Start == Layout.mmioHoleStart)
        #expect(Layout.pciMMIO32Start.rawValue + Layout.pciMMIO32Size == 0xD000_0000, "the PCI window ends at the boot timer")
        #expect(Layout.bootTimerStart.rawValue == 0xD000_0000 && Layout.bootTimerSize == 0x1000)
        #expect(Layout.virtioMMIOStart.rawValue == Layout.bootTimerStart.rawValue + Layout.bootTimerSize)
        let count = Layout.virtioMMIOInterrupts.count
        let first = try #require(Layout.virtioMMIODevice(0)), second = try #require(Layout.virtioMMIODevice(1))
        #expect(first.start.rawValue == 0xD000_1000 && second.start.rawValue == 0xD000_2000, "4 KiB apart, as Firecracker places them")
        let last = try #require(Layout.virtioMMIODevice(count - 1))
        #expect(last.start.rawValue + Layout.virtioMMIOSize <= Layout.pciECAMStart.rawValue)
        #expect(Layout.virtioMMIODevice(count) == nil && Layout.virtioMMIODevice(-1) == nil)
        // Each device its own input below 16 (an ISA IRQ for kernels without
        // ACPI), none of COM1, the ACPI GED, the PIT, the cascade, the RTC or the SCI.
        #expect(Set(Layout.virtioMMIOInterrupts).count == count)
        #expect(Layout.virtioMMIOInterrupts.allSatisfy { $0 < 16 && ![0, 2, 4, 5, 8, 9].contains($0) })
        #expect(!Layout.virtioMMIOInterrupts.contains(Layout.com1IRQ) && !Layout.virtioMMIOInterrupts.contains(Layout.acpiGEDInterrupt))
    }

    @Test("CPUID gives each vCPU its APIC ID and topology, and hides hypercall-based PV features")
    func cpuid() {
        let supported = [
            CPUIDEntry(function: 1, ebx: 0xFF00_0000, ecx: 0, edx: 0),
            CPUIDEntry(function: 0xB, index: 0), CPUIDEntry(function: 0xB, index: 1),
            CPUIDEntry(function: 0x4000_0000),
            CPUIDEntry(function: 0x4000_0001, eax: 0xFFFF_FFFF),
            CPUIDEntry(function: 0x8000_0008),
        ]
        let policy = CPUIDPolicy(cpuCount: 4)
        let third = policy.entries(for: 2, supported: supported)
        let leaf1 = third.first { $0.function == 1 }
        #expect(leaf1.map { $0.ebx >> 24 } == 2)
        #expect(leaf1.map { ($0.ebx >> 16) & 0xFF } == 4)
        #expect(leaf1.map { $0.ecx & (1 << 31) != 0 } == true)
        let coreLevel = third.first { $0.function == 0xB && $0.index == 1 }
        #expect(coreLevel?.edx == 2 && coreLevel?.ebx == 4 && coreLevel?.eax == 2)
        let kvmFeatures = third.first { $0.function == 0x4000_0001 }?.eax ?? 0
        #expect(kvmFeatures & (1 << 7) == 0, "PV unhalt hidden")
        #expect(kvmFeatures & (1 << 11) == 0, "PV IPI hidden")
        #expect(kvmFeatures & (1 << 13) == 0, "PV sched-yield hidden")
        #expect(kvmFeatures & 1 == 1, "kvm-clock offered")
        #expect(third.first { $0.function == 0x4000_0000 }?.ebx == 0x4B4D_564B)
        #expect((third.first { $0.function == 0x8000_0008 }?.ebx ?? 0) & 4 == 4)
    }
}
