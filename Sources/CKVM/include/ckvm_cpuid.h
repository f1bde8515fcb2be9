// The host's own CPUID, which Swift cannot execute: snapshots record the
// feature bits of the CPU they were taken on and refuse a host lacking some.
#ifndef CKVM_CPUID_H
#define CKVM_CPUID_H

#include <stdint.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

// Leaf `leaf`, subleaf `subleaf` into registers[0..3] = EAX, EBX, ECX, EDX.
// Callers check the highest supported leaf first (leaf 0 / 0x80000000).
static inline void ckvm_host_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t registers[4]) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned int eax, ebx, ecx, edx;
    __cpuid_count(leaf, subleaf, eax, ebx, ecx, edx);
    registers[0] = eax; registers[1] = ebx; registers[2] = ecx; registers[3] = edx;
#else
    registers[0] = registers[1] = registers[2] = registers[3] = 0;
#endif
}

#endif
