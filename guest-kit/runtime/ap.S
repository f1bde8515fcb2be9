/*
 * AP start-up trampoline. Ring 3 copies kit_ap_tramp_start..kit_ap_tramp_end
 * to KIT_AP_TRAMPOLINE (0x8000) and sends INIT-SIPI-SIPI with vector 0x08.
 * The AP runs real mode -> protected mode -> long mode on the BSP's GDT and
 * page tables (all CPL0, i.e. emulated: kept to ~30 instructions), records
 * its APIC ID in kit_ap_seen[], atomically increments kit_ap_online and
 * halts with interrupts off forever.
 */
#include "kit_asm.h"

    .text
    .code16
    .globl kit_ap_tramp_start, kit_ap_tramp_end
kit_ap_tramp_start:
    cli
    xor     %ax, %ax
    mov     %ax, %ds
    lgdtl   KIT_AP_TRAMPOLINE + (kit_ap_gdtr - kit_ap_tramp_start)
    mov     %cr0, %eax
    or      $1, %eax                    /* CR0.PE */
    mov     %eax, %cr0
    ljmpl   $KIT_SEL_KCODE32, $kit_ap_pm32
    .balign 8
kit_ap_gdtr:
    .word   KIT_GDT_LIMIT
    .long   kit_gdt
kit_ap_tramp_end:

    .code32
kit_ap_pm32:
    mov     $KIT_SEL_KDATA, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    mov     %cr4, %eax
    or      $0x20, %eax                 /* CR4.PAE */
    mov     %eax, %cr4
    mov     $kit_pml4, %eax
    mov     %eax, %cr3
    mov     $0xC0000080, %ecx
    rdmsr
    or      $0x100, %eax                /* EFER.LME */
    wrmsr
    mov     %cr0, %eax
    or      $0x80000000, %eax           /* CR0.PG */
    mov     %eax, %cr0
    ljmp    $KIT_SEL_KCODE64, $kit_ap_lm64

    .code64
kit_ap_lm64:
    mov     $0xFEE00020, %esi           /* xAPIC ID register */
    mov     (%rsi), %eax
    shr     $24, %eax
    movb    $1, kit_ap_seen(%rax)
    lock incl kit_ap_online
1:  cli
    hlt
    jmp     1b

    .bss
    .globl kit_ap_seen, kit_ap_online
    .balign 64
kit_ap_online:
    .skip   64
kit_ap_seen:
    .skip   256

    .section .note.GNU-stack, "", @progbits
