/*
 * idle: prints "KIT idle ready" and halts with interrupts off, so the vCPU
 * sleeps in the host kernel and costs no CPU. It never powers off by itself:
 * swiftletd's tests and benchmarks stop it from outside (Stop, SIGTERM,
 * SIGKILL), and use it as a long-running, many-at-once guest.
 *
 *   KIT idle ready
 */
#include "kit.h"

KIT_PROGRAM("idle");

int kit_main(void)
{
    kit_puts("KIT idle ready\n");
    kit_halt_forever();
}
