/*
 * exitloop: N one-byte writes to port 0x80 from ring 3, each a VM exit to
 * the VMM, timed with rdtsc. N comes from "iterations=N" on the command line
 * (default 100000).
 *
 *   KIT exitloop iterations=N cycles=C cycles_per_exit=E tsc_hz=H ns_per_exit=X
 */
#include "kit.h"

KIT_PROGRAM("exitloop");

int kit_main(void)
{
    uint64_t n = kit_cmdline_u64("iterations", 100000);
    uint64_t hz = kit_tsc_hz();
    outb(0x80, 0);                      /* warm up */
    uint64_t t0 = rdtsc();
    for (uint64_t i = 0; i < n; i++)
        outb(0x80, (uint8_t)i);
    uint64_t cycles = rdtsc() - t0;
    uint64_t per = n ? cycles / n : 0;
    kit_printf("KIT exitloop iterations=%lu cycles=%lu cycles_per_exit=%lu tsc_hz=%lu", n, cycles, per, hz);
    if (hz && n)
        kit_printf(" ns_per_exit=%lu", cycles * 1000 / n * 1000000 / hz);  /* millicycles per exit * 1e6 / hz */
    kit_putc('\n');
    return 0;
}
