/*
 * floor: the smallest honest KVM VMM, used by benchmarks/bench.py as the
 * lower bound ("floor") for start-up time, memory and exit cost.
 *
 *   floor --kernel X.elf [--cmdline TEXT] [--memory MiB]
 *
 * One vCPU, in-kernel irqchip and PIT, one anonymous RAM slot. Boots an ELF64
 * through its PVH entry note (Xen note type 18, XEN_ELFNOTE_PHYS32_ENTRY):
 * 32-bit protected mode, paging off, EBX = hvm_start_info. Provides a
 * hardware-reduced ACPI FADT whose SLEEP_CONTROL_REG is I/O port 0x600 and a
 * DSDT with \_S5 = 5, COM1 output (port 0x3F8 with DLAB clear) to stdout, and
 * nothing else.
 *
 * Exit status: 0 on ACPI power-off (write with SLP_EN to port 0x600),
 * 1 on usage or set-up errors, 3 on a guest shutdown (triple fault), KVM
 * internal error, failed entry or other unexpected exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <elf.h>

/* Guest physical layout. */
#define GDT_ADDR        0x500ull
#define IDT_ADDR        0x520ull
#define START_INFO_ADDR 0x6000ull
#define MEMMAP_ADDR     0x6100ull
#define CMDLINE_ADDR    0x20000ull
#define CMDLINE_MAX     0x10000ull
#define ACPI_BASE       0xE0000ull
#define RSDP_ADDR       (ACPI_BASE + 0x000)
#define XSDT_ADDR       (ACPI_BASE + 0x040)
#define FADT_ADDR       (ACPI_BASE + 0x100)
#define DSDT_ADDR       (ACPI_BASE + 0x300)
#define MADT_ADDR       (ACPI_BASE + 0x400)
#define EBDA_START      0x9FC00ull
#define HIGH_RAM_START  0x100000ull
#define TSS_ADDR        0xFFFBD000ull
#define IDENTITY_ADDR   0xFFFBC000ull

#define PORT_COM1       0x3F8
#define PORT_SLEEP_CTL  0x600
#define PORT_SLEEP_STS  0x601
#define SLP_EN          0x20

static uint8_t *ram;
static uint64_t ram_size;

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("floor: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ioctl that dies with the request's name on failure; returns the result. */
static int xioctl(int fd, unsigned long req, void *arg, const char *name)
{
    int r = ioctl(fd, req, arg);
    if (r < 0)
        die("%s: %s", name, strerror(errno));
    return r;
}
#define IOCTL(fd, req, arg) xioctl((fd), (req), (void *)(arg), #req)

/* Guest memory access, bounds-checked. */
static void *gpa(uint64_t addr, uint64_t len)
{
    if (addr > ram_size || len > ram_size - addr)
        die("guest range 0x%llx+0x%llx outside RAM (0x%llx)", (unsigned long long)addr,
            (unsigned long long)len, (unsigned long long)ram_size);
    return ram + addr;
}
static void put8(uint64_t a, uint8_t v) { *(uint8_t *)gpa(a, 1) = v; }
static void put32(uint64_t a, uint32_t v) { memcpy(gpa(a, 4), &v, 4); }
static void put64(uint64_t a, uint64_t v) { memcpy(gpa(a, 8), &v, 8); }

/* ------------------------------------------------------------------ ELF */
static uint32_t load_elf(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("stat %s: %s", path, strerror(errno));
    size_t size = (size_t)st.st_size;
    if (size < sizeof(Elf64_Ehdr))
        die("%s: too small for an ELF64 header", path);
    uint8_t *f = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f == MAP_FAILED)
        die("mmap %s: %s", path, strerror(errno));
    close(fd);

    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)f;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_ident[EI_DATA] != ELFDATA2LSB || eh->e_machine != EM_X86_64)
        die("%s: not a little-endian ELF64 x86-64 file", path);
    if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phoff > size ||
        (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > size - eh->e_phoff)
        die("%s: bad program header table", path);

    uint64_t entry = 0;
    int found = 0, loads = 0;
    const Elf64_Phdr *ph = (const Elf64_Phdr *)(f + eh->e_phoff);
    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *p = &ph[i];
        if (p->p_offset > size || p->p_filesz > size - p->p_offset)
            die("%s: segment %d outside the file", path, i);
        if (p->p_type == PT_LOAD) {
            if (p->p_filesz > p->p_memsz)
                die("%s: segment %d filesz > memsz", path, i);
            uint8_t *dst = gpa(p->p_paddr, p->p_memsz);
            memcpy(dst, f + p->p_offset, p->p_filesz);
            memset(dst + p->p_filesz, 0, p->p_memsz - p->p_filesz);
            loads++;
        } else if (p->p_type == PT_NOTE && !found) {
            /* Notes: namesz, descsz, type, name and desc each padded to 4. */
            uint64_t off = 0, end = p->p_filesz;
            const uint8_t *n = f + p->p_offset;
            while (off + 12 <= end) {
                uint32_t namesz, descsz, type;
                memcpy(&namesz, n + off, 4);
                memcpy(&descsz, n + off + 4, 4);
                memcpy(&type, n + off + 8, 4);
                uint64_t name = off + 12, desc = name + ((namesz + 3ull) & ~3ull);
                uint64_t next = desc + ((descsz + 3ull) & ~3ull);
                if (next > end)
                    break;
                if (type == 18 && namesz == 4 && !memcmp(n + name, "Xen", 4) && descsz >= 4) {
                    uint32_t e32;
                    memcpy(&e32, n + desc, 4);
                    entry = e32;
                    found = 1;
                    break;
                }
                off = next;
            }
        }
    }
    munmap(f, size);
    if (!loads)
        die("%s: no PT_LOAD segment", path);
    if (!found)
        die("%s: no PVH entry note (Xen, type 18 XEN_ELFNOTE_PHYS32_ENTRY)", path);
    return (uint32_t)entry;
}

/* ------------------------------------------------------------------ ACPI */
static void acpi_checksum(uint64_t addr, uint32_t len, uint32_t sum_off)
{
    uint8_t *p = gpa(addr, len), s = 0;
    p[sum_off] = 0;
    for (uint32_t i = 0; i < len; i++)
        s = (uint8_t)(s + p[i]);
    p[sum_off] = (uint8_t)-s;
}

static void acpi_header(uint64_t a, const char *sig, uint32_t len, uint8_t rev)
{
    memcpy(gpa(a, 36), sig, 4);
    put32(a + 4, len);
    put8(a + 8, rev);
    memcpy(gpa(a + 10, 6), "FLOOR ", 6);        /* OEM ID */
    memcpy(gpa(a + 16, 8), "FLOORVMM", 8);      /* OEM table ID */
    put32(a + 24, 1);                           /* OEM revision */
    memcpy(gpa(a + 28, 4), "FLOR", 4);          /* creator ID */
    put32(a + 32, 1);                           /* creator revision */
}

static void put_gas(uint64_t a, uint8_t space, uint8_t width, uint8_t access, uint64_t addr)
{
    put8(a, space);
    put8(a + 1, width);
    put8(a + 2, 0);
    put8(a + 3, access);
    put64(a + 4, addr);
}

static void write_acpi(void)
{
    /* DSDT: Name(_S5_, Package(){5, 0, 0, 0}). PkgLength counts itself, the
       NumElements byte and the elements: 1 + 1 + 2 + 3 = 7. */
    static const uint8_t aml[] = {
        0x08, '_', 'S', '5', '_', 0x12, 0x07, 0x04, 0x0A, 0x05, 0x00, 0x00, 0x00,
    };
    uint32_t dsdt_len = 36 + sizeof aml;
    acpi_header(DSDT_ADDR, "DSDT", dsdt_len, 2);
    memcpy(gpa(DSDT_ADDR + 36, sizeof aml), aml, sizeof aml);
    acpi_checksum(DSDT_ADDR, dsdt_len, 9);

    /* FADT revision 6 (276 bytes), hardware-reduced. */
    acpi_header(FADT_ADDR, "FACP", 276, 6);
    put32(FADT_ADDR + 40, (uint32_t)DSDT_ADDR);
    put32(FADT_ADDR + 112, 1u << 20);           /* HW_REDUCED_ACPI */
    put8(FADT_ADDR + 131, 5);                   /* FADT minor version (6.5) */
    put64(FADT_ADDR + 140, DSDT_ADDR);          /* X_DSDT */
    put_gas(FADT_ADDR + 244, 1, 8, 1, PORT_SLEEP_CTL);  /* SLEEP_CONTROL_REG */
    put_gas(FADT_ADDR + 256, 1, 8, 1, PORT_SLEEP_STS);  /* SLEEP_STATUS_REG */
    memcpy(gpa(FADT_ADDR + 268, 8), "FLOORVMM", 8);     /* hypervisor vendor */
    acpi_checksum(FADT_ADDR, 276, 9);

    /* MADT: one Local APIC (ID 0) and the IO-APIC. */
    uint32_t madt_len = 44 + 8 + 12;
    acpi_header(MADT_ADDR, "APIC", madt_len, 4);
    put32(MADT_ADDR + 36, 0xFEE00000u);         /* Local APIC address */
    put32(MADT_ADDR + 40, 1);                   /* PCAT_COMPAT: 8259s present */
    uint64_t e = MADT_ADDR + 44;
    put8(e, 0); put8(e + 1, 8); put8(e + 2, 0); put8(e + 3, 0); put32(e + 4, 1);
    e += 8;
    put8(e, 1); put8(e + 1, 12); put8(e + 2, 1); put8(e + 3, 0);
    put32(e + 4, 0xFEC00000u); put32(e + 8, 0);
    acpi_checksum(MADT_ADDR, madt_len, 9);

    /* XSDT -> FADT, MADT. */
    uint32_t xsdt_len = 36 + 2 * 8;
    acpi_header(XSDT_ADDR, "XSDT", xsdt_len, 1);
    put64(XSDT_ADDR + 36, FADT_ADDR);
    put64(XSDT_ADDR + 44, MADT_ADDR);
    acpi_checksum(XSDT_ADDR, xsdt_len, 9);

    /* RSDP revision 2: checksum over the first 20 bytes, extended over 36. */
    memcpy(gpa(RSDP_ADDR, 36), "RSD PTR ", 8);
    memcpy(gpa(RSDP_ADDR + 9, 6), "FLOOR ", 6);
    put8(RSDP_ADDR + 15, 2);
    put32(RSDP_ADDR + 16, 0);                   /* no RSDT */
    put32(RSDP_ADDR + 20, 36);
    put64(RSDP_ADDR + 24, XSDT_ADDR);
    acpi_checksum(RSDP_ADDR, 20, 8);
    acpi_checksum(RSDP_ADDR, 36, 32);
}

/* ------------------------------------------------------------------ PVH */
static void write_start_info(const char *cmdline)
{
    size_t n = strlen(cmdline);
    if (n + 1 > CMDLINE_MAX)
        die("command line too long (%zu bytes)", n);
    memcpy(gpa(CMDLINE_ADDR, n + 1), cmdline, n + 1);

    struct { uint64_t addr, size; uint32_t type, reserved; } map[3] = {
        { 0, EBDA_START, 1, 0 },
        { EBDA_START, HIGH_RAM_START - EBDA_START, 2, 0 },
        { HIGH_RAM_START, ram_size - HIGH_RAM_START, 1, 0 },
    };
    memcpy(gpa(MEMMAP_ADDR, sizeof map), map, sizeof map);

    uint64_t s = START_INFO_ADDR;
    put32(s + 0, 0x336ec578u);                  /* magic */
    put32(s + 4, 1);                            /* version */
    put32(s + 8, 0);                            /* flags */
    put32(s + 12, 0);                           /* nr_modules */
    put64(s + 16, 0);                           /* modlist_paddr */
    put64(s + 24, CMDLINE_ADDR);                /* cmdline_paddr */
    put64(s + 32, RSDP_ADDR);                   /* rsdp_paddr */
    put64(s + 40, MEMMAP_ADDR);                 /* memmap_paddr */
    put32(s + 48, 3);                           /* memmap_entries */
    put32(s + 52, 0);
}

/* ------------------------------------------------------------------ vCPU */
static struct kvm_segment seg(uint16_t sel, uint8_t type, uint8_t s, uint8_t db, uint32_t limit,
                              uint8_t g)
{
    struct kvm_segment r = {
        .base = 0, .limit = limit, .selector = sel, .type = type, .present = 1,
        .dpl = 0, .db = db, .s = s, .l = 0, .g = g, .avl = 0, .unusable = 0,
    };
    return r;
}

static void setup_vcpu(int kvm, int vcpu, uint32_t entry)
{
    /* CPUID: everything KVM supports, as is. */
    int nent = 256;
    struct kvm_cpuid2 *cpuid;
    for (;;) {
        cpuid = calloc(1, sizeof *cpuid + nent * sizeof(struct kvm_cpuid_entry2));
        if (!cpuid)
            die("out of memory");
        cpuid->nent = nent;
        if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
            break;
        if (errno != E2BIG)
            die("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
        free(cpuid);
        nent *= 2;
    }
    IOCTL(vcpu, KVM_SET_CPUID2, cpuid);
    free(cpuid);

    /* Boot GDT: null, 0x08 flat 32-bit code, 0x10 flat data, 0x18 busy TSS. */
    put64(GDT_ADDR + 0x00, 0);
    put64(GDT_ADDR + 0x08, 0x00CF9B000000FFFFull);
    put64(GDT_ADDR + 0x10, 0x00CF93000000FFFFull);
    put64(GDT_ADDR + 0x18, 0x00008B0000000067ull);
    put64(IDT_ADDR, 0);

    struct kvm_sregs sregs;
    IOCTL(vcpu, KVM_GET_SREGS, &sregs);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 0;
    sregs.cs = seg(0x08, 0xB, 1, 1, 0xFFFFFFFF, 1);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg(0x10, 0x3, 1, 1, 0xFFFFFFFF, 1);
    sregs.tr = seg(0x18, 0xB, 0, 0, 0x67, 0);
    sregs.ldt.unusable = 1;
    sregs.cr0 = 0x11;                           /* PE | ET */
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    IOCTL(vcpu, KVM_SET_SREGS, &sregs);

    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rflags = 2;
    regs.rip = entry;
    regs.rbx = START_INFO_ADDR;
    IOCTL(vcpu, KVM_SET_REGS, &regs);
}

/* ------------------------------------------------------------------ main */
static void usage(void)
{
    fputs("usage: floor --kernel X.elf [--cmdline TEXT] [--memory MiB]\n", stderr);
    exit(1);
}

int main(int argc, char **argv)
{
    const char *kernel = NULL, *cmdline = "";
    unsigned long mem_mib = 128;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--kernel") && i + 1 < argc) {
            kernel = argv[++i];
        } else if (!strcmp(argv[i], "--cmdline") && i + 1 < argc) {
            cmdline = argv[++i];
        } else if (!strcmp(argv[i], "--memory") && i + 1 < argc) {
            char *end;
            mem_mib = strtoul(argv[++i], &end, 10);
            if (*end || mem_mib < 2 || mem_mib > 3072)
                die("--memory: MiB between 2 and 3072 expected");
        } else {
            usage();
        }
    }
    if (!kernel)
        usage();
    ram_size = (uint64_t)mem_mib << 20;

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("open /dev/kvm: %s", strerror(errno));
    int api = IOCTL(kvm, KVM_GET_API_VERSION, 0);
    if (api != KVM_API_VERSION)
        die("KVM API version %d, expected %d", api, KVM_API_VERSION);
    int vm = IOCTL(kvm, KVM_CREATE_VM, 0);
    IOCTL(vm, KVM_SET_TSS_ADDR, TSS_ADDR);
    uint64_t identity = IDENTITY_ADDR;
    IOCTL(vm, KVM_SET_IDENTITY_MAP_ADDR, &identity);
    IOCTL(vm, KVM_CREATE_IRQCHIP, 0);
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
    IOCTL(vm, KVM_CREATE_PIT2, &pit);

    ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
               -1, 0);
    if (ram == MAP_FAILED)
        die("mmap guest RAM (%lu MiB): %s", mem_mib, strerror(errno));
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = ram_size,
        .userspace_addr = (uint64_t)(uintptr_t)ram,
    };
    IOCTL(vm, KVM_SET_USER_MEMORY_REGION, &region);

    uint32_t entry = load_elf(kernel);
    write_acpi();
    write_start_info(cmdline);

    int vcpu = IOCTL(vm, KVM_CREATE_VCPU, 0);
    int run_size = IOCTL(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run: %s", strerror(errno));
    setup_vcpu(kvm, vcpu, entry);

    uint8_t lcr = 0;                            /* COM1 line control (bit 7: DLAB) */
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("KVM_RUN: %s", strerror(errno));
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            uint16_t port = run->io.port;
            for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
                if (run->io.direction == KVM_EXIT_IO_OUT) {
                    if (port == PORT_COM1 && !(lcr & 0x80)) {   /* THR, not divisor */
                        ssize_t w;
                        do
                            w = write(STDOUT_FILENO, data, 1);
                        while (w < 0 && errno == EINTR);
                    } else if (port == PORT_COM1 + 3) {
                        lcr = data[0];
                    } else if (port == PORT_SLEEP_CTL && (data[0] & SLP_EN)) {
                        exit(0);
                    }
                    /* port 0x80 and everything else: ignored */
                } else {
                    uint8_t v = 0xFF;
                    if (port == PORT_COM1 + 5)
                        v = 0x60;               /* LSR: THR and transmitter empty */
                    else if (port == PORT_COM1 + 3)
                        v = lcr;
                    else if (port >= PORT_COM1 && port <= PORT_COM1 + 7)
                        v = 0;
                    memset(data, v, run->io.size);
                }
            }
            break;
        }
        case KVM_EXIT_MMIO:
            if (!run->mmio.is_write)
                memset(run->mmio.data, 0xFF, sizeof run->mmio.data);
            break;
        case KVM_EXIT_INTR:
            break;
        case KVM_EXIT_HLT:
            fprintf(stderr, "floor: guest halted\n");
            exit(3);
        case KVM_EXIT_SHUTDOWN:
            fprintf(stderr, "floor: guest shutdown (triple fault)\n");
            exit(3);
        case KVM_EXIT_SYSTEM_EVENT:
            fprintf(stderr, "floor: system event type %u\n", run->system_event.type);
            exit(3);
        case KVM_EXIT_FAIL_ENTRY:
            fprintf(stderr, "floor: VM entry failed, reason 0x%llx\n",
                    (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
            exit(3);
        case KVM_EXIT_INTERNAL_ERROR:
            fprintf(stderr, "floor: KVM internal error, suberror %u", run->internal.suberror);
            for (uint32_t i = 0; i < run->internal.ndata && i < 16; i++)
                fprintf(stderr, " 0x%llx", (unsigned long long)run->internal.data[i]);
            fputc('\n', stderr);
            exit(3);
        default:
            fprintf(stderr, "floor: unexpected exit reason %u\n", run->exit_reason);
            exit(3);
        }
    }
}
