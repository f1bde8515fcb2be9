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

/* PIT calibration by reading a counter back: channel ch in mode 2 with a
   65536 reload at 1.193182 MHz, latched and read until 119318 ticks
   (100 ms) have gone by, wrap-arounds accumulated. The gate of channel 2
   is raised through port 0x61 (absent on QEMU microvm, whose in-kernel PIT
   counts anyway). 0 if the counter does not move. */
static uint16_t pit_read(int ch)
{
    outb(0x43, (uint8_t)(ch << 6));             /* counter latch */
    uint8_t lo = inb((uint16_t)(0x40 + ch));
    uint8_t hi = inb((uint16_t)(0x40 + ch));
    return (uint16_t)(lo | (hi << 8));
}

static uint64_t pit_calibrate(int ch)
{
    const uint64_t ticks = 119318;
    uint8_t p61 = inb(0x61);
    if (ch == 2 && p61 != 0xFF)
        outb(0x61, (uint8_t)((p61 & ~0x02) | 0x01));   /* gate on, speaker off */
    outb(0x43, (uint8_t)((ch << 6) | 0x34));   /* lo/hi, mode 2, binary */
    outb((uint16_t)(0x40 + ch), 0);
    outb((uint16_t)(0x40 + ch), 0);             /* reload 0 = 65536 */
    uint16_t prev = pit_read(ch);
    uint64_t elapsed = 0, t0 = rdtsc(), t1 = t0;
    int still = 0;
    while (elapsed < ticks) {
        uint16_t now = pit_read(ch);
        t1 = rdtsc();
        uint16_t delta = (uint16_t)(prev - now);        /* counts down, wraps */
        if (!delta && ++still > 200)
            return 0;                                   /* not counting */
        if (delta)
            still = 0;
        elapsed += delta;
        prev = now;
    }
    if (ch == 2 && p61 != 0xFF)
        outb(0x61, p61);
    return (t1 - t0) * 1193182ull / elapsed;
}

/* Median of three calibrations: a loaded host makes single ones noisy. */
static uint64_t pit_median(int ch)
{
    uint64_t a = pit_calibrate(ch);
    if (!a)
        return 0;
    uint64_t b = pit_calibrate(ch), c = pit_calibrate(ch);
    if ((a <= b && b <= c) || (c <= b && b <= a))
        return b;
    if ((b <= a && a <= c) || (c <= a && a <= b))
        return a;
    return c;
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
        else if ((rate = pit_median(2)))
            rate_source = "pit2";
        else if ((rate = pit_median(0)))
            rate_source = "pit0";
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
