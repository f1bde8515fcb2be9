/*
 * Swiftlet guest kit: the ring-3 library every kit program links against.
 *
 * A program defines KIT_PROGRAM("name") and `int kit_main(void)`. The runtime
 * enters through PVH, switches to long mode and drops to ring 3 with port
 * I/O allowed (IOPL=3 plus an all-ports TSS I/O bitmap, which is what kvm_pvm
 * honours) and an identity map of the first 4 GiB (user-accessible). Ring 3
 * initialises COM1, checks the hvm_start_info magic, parses ACPI (for
 * power-off), then calls kit_main(). Returning 0 prints "KIT <name> PASS", anything else prints
 * "KIT <name> FAIL main returned N"; both then power off through ACPI.
 */
#ifndef KIT_H
#define KIT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kit_asm.h"

#define KIT_PROGRAM(n) const char kit_name[] = n
extern const char kit_name[];
int kit_main(void);

#define KIT_NORETURN __attribute__((noreturn))
#define KIT_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* ---- PVH boot information (xen/include/public/arch-x86/hvm/start_info.h) */
#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;        /* version >= 1 */
    uint64_t memmap_paddr;      /* version >= 1 */
    uint32_t memmap_entries;    /* version >= 1 */
    uint32_t reserved;
};

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;              /* 1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 unusable */
    uint32_t reserved;
};

const struct hvm_start_info *kit_start_info(void);
const char *kit_cmdline(void);          /* never NULL */
/* Value of "key=NUMBER" (decimal or 0x hex) on the command line, or def. */
uint64_t kit_cmdline_u64(const char *key, uint64_t def);
/* Copies the value of "key=VALUE" into buf; false if the key is absent. */
bool kit_cmdline_str(const char *key, char *buf, size_t len);

/* ---- port I/O, MMIO, CPU */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline uint8_t mmio_read8(uint64_t a) { return *(volatile uint8_t *)(uintptr_t)a; }
static inline uint32_t mmio_read32(uint64_t a) { return *(volatile uint32_t *)(uintptr_t)a; }
static inline void mmio_write8(uint64_t a, uint8_t v) { *(volatile uint8_t *)(uintptr_t)a = v; }
static inline void mmio_write32(uint64_t a, uint32_t v) { *(volatile uint32_t *)(uintptr_t)a = v; }
static inline uint16_t mmio_read16(uint64_t a) { return *(volatile uint16_t *)(uintptr_t)a; }
static inline void mmio_write16(uint64_t a, uint16_t v) { *(volatile uint16_t *)(uintptr_t)a = v; }
static inline uint64_t mmio_read64(uint64_t a) { return *(volatile uint64_t *)(uintptr_t)a; }
static inline void mmio_write64(uint64_t a, uint64_t v) { *(volatile uint64_t *)(uintptr_t)a = v; }
static inline void kit_mb(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline unsigned kit_cpl(void)
{
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    return cs & 3;
}

/* TSC frequency from CPUID 0x15 or KVM's 0x40000010, 0 if unknown. */
uint64_t kit_tsc_hz(void);

/* TSC rate for timing (runtime/mem.c): "tsc_hz=" on the command line, else
   kit_tsc_hz(), else a calibration against PIT channel 2 (then 0) read
   back over 100 ms, else an assumed 2 GHz. *source (if not NULL) names
   which: "cmdline", "cpuid", "pit2", "pit0", "assumed". Computed once. */
uint64_t kit_tsc_rate(const char **source);
/* Nanoseconds for a TSC delta at kit_tsc_rate(). */
uint64_t kit_tsc_to_ns(uint64_t cycles);

/* ---- RAM for device buffers (runtime/mem.c): a bump allocator over the
   first PVH memory-map RAM range above the image (and above 2 MiB), below
   the 4 GiB identity map. Zeroed, aligned (power of two). Never freed; fails
   the program when RAM runs out. */
void *kit_alloc(size_t size, size_t align);
/* Highest RAM address + 1 below 4 GiB (for "out of range" tests). */
uint64_t kit_ram_top(void);

/* ---- serial console (COM1, 8250/16550) and formatting */
void kit_serial_init(void);
void kit_putc(char c);
void kit_puts(const char *s);                   /* no newline added */
void kit_printf(const char *fmt, ...) KIT_PRINTF(1, 2);
void kit_vprintf(const char *fmt, va_list ap);

/* ---- outcome and machine control (all usable from ring 3 or ring 0) */
KIT_NORETURN void kit_pass(void);
KIT_NORETURN void kit_fail(const char *fmt, ...) KIT_PRINTF(1, 2);
KIT_NORETURN void kit_poweroff(void);
KIT_NORETURN void kit_reboot(void);
KIT_NORETURN void kit_halt_forever(void);
KIT_NORETURN void kit_triple_fault(void);
/* An exception with this vector makes the trap handler print PASS instead of
   FAIL (used by `fault mode=exception`). -1: none expected. */
extern volatile int kit_expected_vector;

/* ---- ACPI (parsed once, in ring 3, before kit_main) */
#define KIT_ACPI_MAX_TABLES 32
#define KIT_ACPI_MAX_CPUS 256

struct kit_acpi_table {
    char sig[5];
    uint64_t addr;
    uint32_t length;
    bool checksum_ok;
};

struct kit_acpi_info {
    int state;                  /* 0 not parsed, 1 parsed, -1 failed */
    const char *error;          /* why parsing failed */
    uint64_t rsdp;
    const char *rsdp_source;    /* "start_info", "ebda", "bios" */
    uint8_t rsdp_revision;
    bool rsdp_checksum_ok;
    char oem_id[7];
    uint64_t root;              /* XSDT or RSDT address */
    bool root_is_xsdt;
    int ntables;                /* root, then its entries, then DSDT */
    struct kit_acpi_table tables[KIT_ACPI_MAX_TABLES];
    uint64_t fadt, madt, dsdt;
    uint32_t fadt_flags;
    bool hw_reduced;
    /* \_S5 */
    bool s5_found;
    uint8_t slp_typa, slp_typb;
    /* power-off method */
    enum { KIT_OFF_NONE, KIT_OFF_SLEEP_CONTROL, KIT_OFF_PM1 } off_method;
    uint8_t sleep_ctl_space;    /* 0 memory, 1 I/O */
    uint64_t sleep_ctl_addr;
    uint32_t pm1a_cnt, pm1b_cnt;        /* I/O ports */
    /* reset register (FADT flags bit 10) */
    bool reset_supported;
    uint8_t reset_space;
    uint64_t reset_addr;
    uint8_t reset_value;
    /* MADT */
    uint64_t lapic_addr;
    int cpus;                   /* enabled Local APIC (type 0) + x2APIC (type 9) entries */
    int cpus_disabled;
    uint32_t apic_ids[KIT_ACPI_MAX_CPUS];
};

/* Parses (once) and returns the ACPI information. */
const struct kit_acpi_info *kit_acpi(void);
bool kit_acpi_checksum(uint64_t addr, uint32_t len);

/* ---- small libc */
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);

#endif
