/* Swiftlet guest kit: RAM for device buffers and TSC timing. Ring 3. */
#include "kit.h"

extern char __image_end[];

static uint64_t next, limit, ram_top;

static void mem_init(void)
{
    const struct hvm_start_info *si = kit_start_info();
    uint64_t lo = ((uint64_t)(uintptr_t)__image_end + 0x1FFFFF) & ~0x1FFFFFull;
    if (lo < 0x200000)
        lo = 0x200000;
    if (!si || si->version < 1 || !si->memmap_paddr || si->memmap_paddr >= (1ull << 32))
        kit_fail("no PVH memory map for device buffers");
    const struct hvm_memmap_table_entry *e =
        (const struct hvm_memmap_table_entry *)(uintptr_t)si->memmap_paddr;
    uint64_t best = 0, best_end = 0;
    for (uint32_t i = 0; i < si->memmap_entries && i < 128; i++) {
        if (e[i].type != 1)
            continue;
        uint64_t s = e[i].addr, end = e[i].addr + e[i].size;
        if (end > (1ull << 32))
            end = 1ull << 32;
        if (end > ram_top && s < end)
            ram_top = end;
        if (s < lo)
            s = lo;
        if (end > s && end - s > best_end - best) {
            best = s;
            best_end = end;
        }
    }
    if (!best)
        kit_fail("no RAM above the image for device buffers");
    next = best;
    limit = best_end;
}

void *kit_alloc(size_t size, size_t align)
{
    if (!next)
        mem_init();
    if (align < 64)
        align = 64;
    uint64_t a = (next + align - 1) & ~(uint64_t)(align - 1);
    if (a + size > limit || a + size < a)
        kit_fail("out of RAM for device buffers (want %lu at 0x%lx, limit 0x%lx)",
                 (uint64_t)size, a, limit);
    next = a + size;
    memset((void *)(uintptr_t)a, 0, size);
    return (void *)(uintptr_t)a;
}

uint64_t kit_ram_top(void)
{
    if (!next)
        mem_init();
    return ram_top;
}

/* PIT channel 2, gate through port 0x61, mode 0 one-shot: count down
   119318 ticks (100 ms at 1.193182 MHz) and watch OUT2 (port 0x61 bit 5). */
static uint64_t pit_calibrate(void)
{
    const uint32_t ticks = 119318;
    uint8_t p61 = inb(0x61);
    if (p61 == 0xFF)
        return 0;
    outb(0x61, (uint8_t)((p61 & ~0x02) | 0x01));   /* gate on, speaker off */
    outb(0x43, 0xB0);                               /* ch2, lo/hi, mode 0, binary */
    outb(0x42, ticks & 0xFF);
    outb(0x42, (ticks >> 8) & 0xFF);
    uint64_t t0 = rdtsc();
    uint64_t limit_cycles = 20ull * 1000 * 1000 * 1000;  /* ~5 s at 4 GHz: a missing PIT */
    while (!(inb(0x61) & 0x20)) {
        if (rdtsc() - t0 > limit_cycles)
            return 0;
    }
    uint64_t cycles = rdtsc() - t0;
    outb(0x61, p61);
    return cycles * 10;         /* 100 ms -> per second */
}

static uint64_t rate;
static const char *rate_source;

uint64_t kit_tsc_rate(const char **source)
{
    if (!rate) {
        if ((rate = kit_cmdline_u64("tsc_hz", 0)))
            rate_source = "cmdline";
        else if ((rate = kit_tsc_hz()))
            rate_source = "cpuid";
        else if ((rate = pit_calibrate()))
            rate_source = "pit";
        else {
            rate = 2000000000ull;
            rate_source = "assumed";
        }
    }
    if (source)
        *source = rate_source;
    return rate;
}

uint64_t kit_tsc_to_ns(uint64_t cycles)
{
    uint64_t hz = kit_tsc_rate(NULL);
    /* cycles * 1e9 / hz without overflow for deltas up to hours */
    return cycles / hz * 1000000000ull + (cycles % hz) * 1000000000ull / hz;
}
