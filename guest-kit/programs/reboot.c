/*
 * reboot: asks for a machine reset through the i8042 keyboard controller
 * (0xFE to port 0x64). If that does nothing, it tries the FADT reset
 * register, then prints "KIT reboot failed" and halts.
 *
 *   KIT reboot requested
 */
#include "kit.h"

KIT_PROGRAM("reboot");

int kit_main(void)
{
    kit_puts("KIT reboot requested\n");
    kit_reboot();
}
