/* Constants shared by the assembly runtime and C. */
#ifndef KIT_ASM_H
#define KIT_ASM_H

/* GDT selectors (runtime/entry.S builds the GDT). */
#define KIT_SEL_KCODE64 0x08
#define KIT_SEL_KDATA   0x10
#define KIT_SEL_KCODE32 0x18
#define KIT_SEL_UDATA   0x20    /* used with RPL 3: 0x23 */
#define KIT_SEL_UCODE64 0x28    /* used with RPL 3: 0x2b */
#define KIT_SEL_TSS     0x30
#define KIT_GDT_LIMIT   0x3F    /* 6 descriptors + 16-byte TSS descriptor, minus 1 */

/* Ring 3 -> ring 0 requests: `int3` at kit_gate (vector 3, DPL 3 gate),
   request number in EAX. Not `int 0x80`: kvm_pvm turns `int N` executed in
   ring 3 into #UD, while int3 (#BP) is delivered through the guest IDT. A #BP
   from anywhere but kit_gate is reported as an exception. */
#define KIT_GATE_VECTOR      3
#define KIT_SYS_HALT         1  /* cli; hlt forever */
#define KIT_SYS_TRIPLE_FAULT 2  /* load an empty IDT and fault at CPL0 */

/* Physical page the AP trampoline is copied to (SIPI vector 0x08). */
#define KIT_AP_TRAMPOLINE 0x8000

#endif
