/*
 * flood: writes serial output as fast as it can, forever, so a test can
 * check that a console nobody reads (a full pipe) never blocks a vCPU and
 * the VMM still stops on a signal or an API action. Each burst is one
 * `rep outsb` of 4 KiB to COM1 (one VM exit), so megabytes arrive in
 * seconds even where exits are slow.
 *
 *   KIT flood start
 *   KIT flood 0123456789abcdefghijklmnopqrstuvwxyz ... (64-byte lines)
 */
#include "kit.h"

KIT_PROGRAM("flood");

static char burst[4096];

static void write_burst(const char *bytes, uint64_t count)
{
    __asm__ volatile("rep outsb" : "+S"(bytes), "+c"(count) : "d"((uint16_t)0x3f8) : "memory");
}

int kit_main(void)
{
    static const char line[] = "KIT flood 0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOP\n";
    for (uint64_t at = 0; at < sizeof burst; at++)
        burst[at] = line[at % (sizeof line - 1)];
    kit_puts("KIT flood start\n");
    for (;;)
        write_burst(burst, sizeof burst);
    return 0;
}
