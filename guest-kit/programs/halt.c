/*
 * halt: prints "KIT halt ready" and halts with interrupts off, so the vCPU
 * sleeps in the host kernel and costs no CPU. It never powers off by itself:
 * swiftletd's tests and benchmarks stop it from outside (Stop, SIGTERM,
 * SIGKILL), and use it as a long-running, many-at-once guest.
 *
 *   KIT halt ready
 */
#include "kit.h"

KIT_PROGRAM("halt");

int kit_main(void)
{
    kit_puts("KIT halt ready\n");
    kit_halt_forever();
}
