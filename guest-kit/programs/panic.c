/*
 * panic: reports a guest panic the way Linux's pvpanic driver does, by
 * writing "panicked" (bit 0) to the pvpanic device's I/O port (0x505, QEMU's
 * default for `-device pvpanic`), then halts. swiftletd's QEMU driver tests
 * use it: QEMU reports GUEST_PANICKED and the VM is crashed.
 *
 *   KIT panic reporting port=0x505
 */
#include "kit.h"

KIT_PROGRAM("panic");

int kit_main(void)
{
    kit_puts("KIT panic reporting port=0x505\n");
    outb(0x505, 1);
    kit_halt_forever();
}
