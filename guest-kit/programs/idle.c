/*
 * idle: runs until the VMM stops it, printing a tick line every
 * "period_ms=N" milliseconds (default 50) so a test can see it make
 * progress (and stop making progress while the VM is paused). It never
 * powers off by itself; "ticks=N" ends it after N ticks (default: never).
 *
 *   KIT idle start period_ms=P
 *   KIT idle tick N
 */
#include "kit.h"

KIT_PROGRAM("idle");

int kit_main(void)
{
    uint64_t period_ms = kit_cmdline_u64("period_ms", 50);
    uint64_t limit = kit_cmdline_u64("ticks", 0);
    uint64_t hz = kit_tsc_hz();
    if (!hz)
        hz = 1000000000ull;             /* unknown: assume 1 GHz */
    uint64_t period = hz / 1000 * (period_ms ? period_ms : 1);
    kit_printf("KIT idle start period_ms=%lu\n", period_ms);
    for (uint64_t tick = 1; limit == 0 || tick <= limit; tick++) {
        uint64_t until = rdtsc() + period;
        while (rdtsc() < until)
            cpu_relax();
        kit_printf("KIT idle tick %lu\n", tick);
    }
    return 0;
}
