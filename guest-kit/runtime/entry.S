/*
 * Swiftlet guest kit runtime: PVH entry, long mode, descriptor tables, trap
 * stubs and the drop to ring 3.
 *
 * Under kvm_pvm every CPL0 instruction goes through KVM's instruction
 * emulator, so everything that can be is built at link time (GDT, TSS
 * descriptor, IDT, identity page tables) and the CPL0 path from _start to the
 * iretq into ring 3 is 49 instructions, with no loops.
 */
#include "kit_asm.h"

/* ------------------------------------------------------------------ */
/* PVH entry note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), desc = the
   32-bit physical entry address, stored as 8 bytes (descsz 8, upper half
   zero) exactly like Linux's vmlinux (_ASM_PTR) and rust-hypervisor-firmware;
   a loader may read either the first 4 bytes or all 8. The section is 4-byte
   aligned: QEMU pads the note name to p_align. */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .quad _start

/* ------------------------------------------------------------------ */
    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    /* PVH: 32-bit protected mode, paging off, EBX = hvm_start_info. */
    cli
    mov     %ebx, %edi
    lgdt    kit_gdtr
    ljmp    $KIT_SEL_KCODE32, $1f
1:  mov     $KIT_SEL_KDATA, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    mov     %eax, %fs
    mov     %eax, %gs
    mov     $kit_stack0_top, %esp
    mov     $0xFF, %al                  /* mask both 8259 PICs: kvm_pvm runs */
    out     %al, $0x21                  /* ring 3 with IF=1, and firmware may */
    out     %al, $0xA1                  /* have left the PIT's IRQ0 unmasked */
    mov     %cr4, %eax
    or      $0x20, %eax                 /* CR4.PAE */
    mov     %eax, %cr4
    mov     $kit_pml4, %eax
    mov     %eax, %cr3
    mov     $0xC0000080, %ecx           /* IA32_EFER */
    rdmsr
    or      $0x100, %eax                /* EFER.LME */
    wrmsr
    mov     %cr0, %eax
    or      $0x80000001, %eax           /* CR0.PG | CR0.PE */
    mov     %eax, %cr0
    ljmp    $KIT_SEL_KCODE64, $kit_long_entry

    .code64
kit_long_entry:
    mov     $KIT_SEL_KDATA, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    mov     $kit_stack0_top, %rsp
    lidt    kit_idtr
    mov     $KIT_SEL_TSS, %eax
    ltr     %ax
    mov     %edi, %edi                  /* start_info, zero-extended */
    /* To ring 3 with IF=0 and IOPL=3 (port I/O from ring 3 on hardware KVM;
       kvm_pvm ignores IOPL there and uses the TSS I/O bitmap instead). */
    pushq   $(KIT_SEL_UDATA | 3)
    pushq   $kit_stack3_top
    pushq   $0x3002
    pushq   $(KIT_SEL_UCODE64 | 3)
    pushq   $kit_ring3_entry
    iretq

/* ------------------------------------------------------------------ */
    .text
    .code64
kit_ring3_entry:
    xor     %ebp, %ebp
    call    kit_start                   /* (uint32_t start_info) never returns */
1:  jmp     1b

/* Ring-3 side of the gate: void kit_gate(uint32_t request). */
    .globl kit_gate
kit_gate:
    mov     %edi, %eax
    int3
kit_gate_ret:
    ret

/* Ring-0 side (IDT vector 3). EAX = request. */
kit_isr_gate:
    cmpq    $kit_gate_ret, (%rsp)       /* from kit_gate? */
    jne     1f
    cmp     $KIT_SYS_HALT, %eax
    je      kit_r0_halt
    cmp     $KIT_SYS_TRIPLE_FAULT, %eax
    je      kit_r0_triple_fault
    iretq
1:  pushq   $0                          /* any other #BP: report it */
    pushq   $KIT_GATE_VECTOR
    jmp     kit_trap_common

    .globl kit_r0_halt
kit_r0_halt:
    cli
1:  hlt
    jmp     1b

    .globl kit_r0_triple_fault
kit_r0_triple_fault:
    lidt    kit_null_idtr
    ud2                                 /* #UD -> #GP -> #DF -> shutdown */
    jmp     kit_r0_halt

/* Common exception path: the stub pushed (error code, vector). */
kit_trap_common:
    push    %r15
    push    %r14
    push    %r13
    push    %r12
    push    %r11
    push    %r10
    push    %r9
    push    %r8
    push    %rbp
    push    %rdi
    push    %rsi
    push    %rdx
    push    %rcx
    push    %rbx
    push    %rax
    mov     %rsp, %rdi
    call    kit_trap                    /* struct kit_frame *, never returns */
    jmp     kit_r0_halt

/* 256 stubs of 16 bytes each (the linker script checks this), so that the
   IDT below can be built from KIT_STUBS_LO + 16 * vector. */
    .section .kit_isr, "ax"
    .set    vec, 0
    .rept   256
    .balign 16
    .if vec == KIT_GATE_VECTOR
    jmp     kit_isr_gate
    .else
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq   $0                          /* no CPU error code: push a zero */
    .endif
    pushq   $vec
    jmp     kit_trap_common
    .endif
    .set    vec, vec + 1
    .endr
    .balign 16

/* ------------------------------------------------------------------ */
    .section .data.pagetables, "aw"
/* Identity map of the first 4 GiB with 2 MiB pages, user-accessible
   (ring 3 does everything, including MMIO), Accessed/Dirty preset so the
   walker never writes them. The top GiB (LAPIC, IO-APIC, PCI/platform MMIO)
   is uncached. */
    .balign 4096
    .globl kit_pml4
kit_pml4:
    .quad   kit_pdpt + 0x27             /* P RW US A */
    .fill   511, 8, 0
kit_pdpt:
    .quad   kit_pd0 + 0x27
    .quad   kit_pd1 + 0x27
    .quad   kit_pd2 + 0x27
    .quad   kit_pd3 + 0x27
    .fill   508, 8, 0
kit_pd0:
    .set    pg, 0
    .rept   512
    .quad   (pg << 21) | 0xE7           /* P RW US A D PS */
    .set    pg, pg + 1
    .endr
kit_pd1:
    .rept   512
    .quad   (pg << 21) | 0xE7
    .set    pg, pg + 1
    .endr
kit_pd2:
    .rept   512
    .quad   (pg << 21) | 0xE7
    .set    pg, pg + 1
    .endr
kit_pd3:
    .rept   512
    .quad   (pg << 21) | 0xFF           /* ... PWT PCD */
    .set    pg, pg + 1
    .endr

    .data
    .balign 16
    .globl kit_gdt
kit_gdt:
    .quad   0
    .quad   0x00AF9B000000FFFF          /* 0x08 ring-0 code, 64-bit */
    .quad   0x00CF93000000FFFF          /* 0x10 ring-0 data */
    .quad   0x00CF9B000000FFFF          /* 0x18 ring-0 code, 32-bit */
    .quad   0x00CFF3000000FFFF          /* 0x20 ring-3 data */
    .quad   0x00AFFB000000FFFF          /* 0x28 ring-3 code, 64-bit */
    /* 0x30: 64-bit TSS, available, limit covers the I/O bitmap */
    .word   kit_tss_end - kit_tss - 1
    .word   KIT_TSS_B0
    .byte   KIT_TSS_B2
    .byte   0x89
    .byte   0x00
    .byte   KIT_TSS_B3
    .long   0
    .long   0
kit_gdt_end:
    .if (kit_gdt_end - kit_gdt - 1) != KIT_GDT_LIMIT
    .error "KIT_GDT_LIMIT does not match the GDT"
    .endif

    .balign 8
    .word   0, 0, 0
    .globl kit_gdtr
kit_gdtr:
    .word   KIT_GDT_LIMIT
    .quad   kit_gdt

    .balign 8
    .word   0, 0, 0
kit_idtr:
    .word   kit_idt_end - kit_idt - 1
    .quad   kit_idt

    .balign 8
    .word   0, 0, 0
kit_null_idtr:
    .word   0
    .quad   0

    .balign 16
    .globl kit_tss
kit_tss:
    .long   0
    .quad   kit_stack0_top              /* RSP0 */
    .quad   0, 0                        /* RSP1, RSP2 */
    .quad   0
    .quad   0, 0, 0, 0, 0, 0, 0         /* IST1-7 */
    .quad   0
    .word   0
    .word   kit_tss_iomap - kit_tss     /* I/O permission bitmap offset */
/* Every port allowed from ring 3. IOPL=3 alone is not enough under kvm_pvm:
   it runs ring 3 with IOPL=0 (pushfq there shows 0x206) but honours the TSS
   I/O permission bitmap. */
kit_tss_iomap:
    .fill   8192, 1, 0
    .byte   0xFF                        /* required terminator byte */
kit_tss_end:

    .balign 16
kit_idt:
    .set    vec, 0
    .rept   256
    .word   KIT_STUBS_LO + 16 * vec
    .word   KIT_SEL_KCODE64
    .byte   0
    .if vec == KIT_GATE_VECTOR
    .byte   0xEE                        /* present, DPL 3, interrupt gate */
    .else
    .byte   0x8E                        /* present, DPL 0, interrupt gate */
    .endif
    .word   KIT_STUBS_MID
    .long   0
    .long   0
    .set    vec, vec + 1
    .endr
kit_idt_end:

/* ------------------------------------------------------------------ */
    .section .kitstack, "aw", @nobits
    .balign 4096
    .skip   16384
    .globl kit_stack0_top
kit_stack0_top:
    .skip   65536
    .globl kit_stack3_top
kit_stack3_top:

    .section .note.GNU-stack, "", @progbits
