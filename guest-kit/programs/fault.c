/*
 * fault: tests how the VMM reports a guest triple fault. Loads an empty IDT
 * at CPL0 (through the int 0x80 gate) and executes ud2 there: #UD cannot be
 * delivered -> #GP -> #DF -> shutdown (triple fault).
 *
 *   KIT fault about to triple-fault
 *
 * With "mode=exception" on the command line it instead executes ud2 in ring 3
 * to test the runtime's exception report (expected: vector 6, then PASS):
 *
 *   KIT fault about to raise #UD in ring 3
 *   KIT exception vector=6 (#UD) error=0x0 rip=0x... cs=0x2b ...
 *   KIT fault PASS
 *
 * "mode=breakpoint" does the same with an int3 outside the runtime's gate
 * (expected: vector 3, then PASS).
 */
#include "kit.h"

KIT_PROGRAM("fault");

int kit_main(void)
{
    char mode[32];
    if (kit_cmdline_str("mode", mode, sizeof mode) && !strncmp(mode, "exception", sizeof mode)) {
        kit_puts("KIT fault about to raise #UD in ring 3\n");
        kit_expected_vector = 6;
        __asm__ volatile("ud2");
        kit_fail("ud2 did not trap");
    }
    if (kit_cmdline_str("mode", mode, sizeof mode) && !strncmp(mode, "breakpoint", sizeof mode)) {
        kit_puts("KIT fault about to raise #BP in ring 3\n");
        kit_expected_vector = 3;
        __asm__ volatile("int3");
        kit_fail("int3 did not trap");
    }
    kit_puts("KIT fault about to triple-fault\n");
    kit_triple_fault();
    kit_fail("still running after the triple fault");
}
