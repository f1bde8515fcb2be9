/*
 * memmap: prints the PVH memory map, sums the RAM (type 1) entries and
 * probes the RAM it can see from ring 3.
 *
 *   KIT memmap entry I addr=0x... size=0x... end=0x... type=T
 *   KIT memmap ram=BYTES entries=N top=0x... top_bytes=BYTES below4g=BYTES
 *   KIT memmap probe words=W highest=0x... ok
 *
 * ram is the sum of the RAM entries; top is the end of the highest RAM entry
 * (for guests below the 32-bit MMIO hole this equals the configured memory
 * size, as both QEMU and Swiftlet keep the EBDA/BIOS hole below 1 MiB out of
 * RAM). Each RAM entry below 4 GiB is probed (write a pattern, read it back,
 * restore) every MiB, at its first and its last word, except for the 1 MiB..
 * image end range that holds this program.
 */
#include "kit.h"

KIT_PROGRAM("memmap");

extern char __image_start[], __image_end[];

static const char *type_name(uint32_t t)
{
    switch (t) {
    case 1: return "ram";
    case 2: return "reserved";
    case 3: return "acpi";
    case 4: return "nvs";
    case 5: return "unusable";
    default: return "other";
    }
}

static uint64_t probes;
static uint64_t probe_highest;

static bool probe(uint64_t addr)
{
    if (addr + 8 > (1ull << 32))
        return true;                            /* only 4 GiB is mapped */
    if (addr + 8 > (uint64_t)(uintptr_t)__image_start && addr < (uint64_t)(uintptr_t)__image_end)
        return true;                            /* ourselves */
    volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)addr;
    uint64_t old = *p;
    uint64_t pattern = 0x5a5aa5a5c3c33c3cull ^ addr;
    *p = pattern;
    uint64_t back = *p;
    *p = ~pattern;
    uint64_t back2 = *p;
    *p = old;
    if (back != pattern || back2 != ~pattern) {
        kit_printf("KIT memmap probe addr=0x%lx wrote=0x%lx read=0x%lx\n", addr, pattern, back);
        return false;
    }
    probes++;
    if (addr > probe_highest)
        probe_highest = addr;
    return true;
}

int kit_main(void)
{
    const struct hvm_start_info *si = kit_start_info();
    if (si->version < 1)
        kit_fail("start_info version %u has no memmap", si->version);
    if (!si->memmap_paddr || !si->memmap_entries)
        kit_fail("empty memmap (paddr=0x%lx entries=%u)", si->memmap_paddr, si->memmap_entries);

    const struct hvm_memmap_table_entry *e =
        (const struct hvm_memmap_table_entry *)(uintptr_t)si->memmap_paddr;
    uint32_t n = si->memmap_entries;
    uint64_t ram = 0, top = 0, below4g = 0;
    for (uint32_t i = 0; i < n; i++) {
        kit_printf("KIT memmap entry %u addr=0x%lx size=0x%lx end=0x%lx type=%u %s\n", i, e[i].addr,
                   e[i].size, e[i].addr + e[i].size, e[i].type, type_name(e[i].type));
        if (e[i].type != 1)
            continue;
        ram += e[i].size;
        if (e[i].addr + e[i].size > top)
            top = e[i].addr + e[i].size;
        if (e[i].addr < (1ull << 32)) {
            uint64_t end = e[i].addr + e[i].size;
            below4g += (end > (1ull << 32) ? (1ull << 32) : end) - e[i].addr;
        }
    }
    kit_printf("KIT memmap ram=%lu entries=%u top=0x%lx top_bytes=%lu below4g=%lu\n", ram, n, top, top,
               below4g);
    if (!ram)
        kit_fail("no RAM entries");

    for (uint32_t i = 0; i < n; i++) {
        if (e[i].type != 1 || e[i].size < 8)
            continue;
        uint64_t start = e[i].addr, end = e[i].addr + e[i].size;
        if (!probe(start) || !probe(end - 8))
            kit_fail("RAM probe failed in entry %u", i);
        for (uint64_t a = (start + 0xFFFFF) & ~0xFFFFFull; a + 8 <= end; a += 0x100000)
            if (!probe(a))
                kit_fail("RAM probe failed in entry %u", i);
    }
    kit_printf("KIT memmap probe words=%lu highest=0x%lx ok\n", probes, probe_highest);
    return 0;
}
