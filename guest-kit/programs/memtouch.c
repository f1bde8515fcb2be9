/*
 * memtouch: writes one word in every 4 KiB page of the RAM below 4 GiB
 * (except this program's image), so the VMM really backs all guest memory:
 * the cgroup memory-limit test needs a guest that uses more memory than
 * its VMM's limit. Reports progress every 16 MiB.
 *
 *   KIT memtouch mib=N
 *   KIT memtouch done mib=N
 */
#include "kit.h"

KIT_PROGRAM("memtouch");

extern char __image_start[], __image_end[];

int kit_main(void)
{
    const struct hvm_start_info *si = kit_start_info();
    if (si->version < 1 || !si->memmap_paddr || !si->memmap_entries)
        kit_fail("no memmap");
    const struct hvm_memmap_table_entry *e =
        (const struct hvm_memmap_table_entry *)(uintptr_t)si->memmap_paddr;
    uint64_t image_start = (uint64_t)(uintptr_t)__image_start, image_end = (uint64_t)(uintptr_t)__image_end;
    uint64_t pages = 0;
    for (uint32_t i = 0; i < si->memmap_entries; i++) {
        if (e[i].type != 1)
            continue;
        uint64_t start = (e[i].addr + 0xFFF) & ~0xFFFull, end = e[i].addr + e[i].size;
        if (end > (1ull << 32))
            end = 1ull << 32;                   /* only 4 GiB is mapped */
        for (uint64_t a = start; a + 8 <= end; a += 0x1000) {
            if (a + 0x1000 > image_start && a < image_end)
                continue;                       /* ourselves */
            if (a < 0x100000)
                continue;                       /* the boot structures */
            *(volatile uint64_t *)(uintptr_t)a = a ^ 0x5a5aa5a5c3c33c3cull;
            if (++pages % 4096 == 0)
                kit_printf("KIT memtouch mib=%lu\n", pages / 256);
        }
    }
    kit_printf("KIT memtouch done mib=%lu\n", pages / 256);
    return 0;
}
