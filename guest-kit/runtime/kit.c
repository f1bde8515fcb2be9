/* Swiftlet guest kit: ring-3 runtime (start-up, console, outcome, traps). */
#include "kit.h"

static const struct hvm_start_info *start_info;
static uint32_t start_info_paddr;
volatile int kit_expected_vector = -1;

extern char __bss_start[], __bss_end[];

/* ------------------------------------------------------------------ libc */
void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    if (dp <= sp || dp >= sp + n)
        return memcpy(d, s, n);
    while (n--)
        dp[n] = sp[n];
    return d;
}

void *memset(void *d, int c, size_t n)
{
    uint8_t *dp = d;
    while (n--)
        *dp++ = (uint8_t)c;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i])
            return (uint8_t)a[i] < (uint8_t)b[i] ? -1 : 1;
        if (!a[i])
            return 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ serial */
#define COM1 0x3F8

void kit_serial_init(void)
{
    outb(COM1 + 1, 0x00);       /* IER: no interrupts */
    outb(COM1 + 3, 0x80);       /* LCR: DLAB */
    outb(COM1 + 0, 0x01);       /* DLL: 115200 baud */
    outb(COM1 + 1, 0x00);       /* DLM */
    outb(COM1 + 3, 0x03);       /* LCR: 8N1 */
    outb(COM1 + 4, 0x03);       /* MCR: DTR | RTS */
}

void kit_putc(char c)
{
    if (c == '\n')
        kit_putc('\r');
    /* LSR bit 5: transmit holding register empty (bounded wait). */
    for (int i = 0; i < 100000; i++)
        if (inb(COM1 + 5) & 0x20)
            break;
    outb(COM1, (uint8_t)c);
}

void kit_puts(const char *s)
{
    while (*s)
        kit_putc(*s++);
}

static void put_u64(uint64_t v, unsigned base, int width, char pad, bool upper)
{
    char buf[24];
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    int n = 0;
    do {
        buf[n++] = digits[v % base];
        v /= base;
    } while (v);
    while (n < width && n < (int)sizeof buf)
        buf[n++] = pad;
    while (n)
        kit_putc(buf[--n]);
}

/* %s %c %d %i %u %x %X %p %%, with l / ll / z and optional 0 / width. */
void kit_vprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            kit_putc(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            longs++;
            fmt++;
        }
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int len = (int)strlen(s);
            for (; len < width; len++)
                kit_putc(' ');
            kit_puts(s);
            break;
        }
        case 'c':
            kit_putc((char)va_arg(ap, int));
            break;
        case 'd':
        case 'i': {
            int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
            uint64_t u = (uint64_t)v;
            if (v < 0) {
                kit_putc('-');
                u = -u;
            }
            put_u64(u, 10, width, pad, false);
            break;
        }
        case 'u':
            put_u64(longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, pad, false);
            break;
        case 'x':
        case 'X':
            put_u64(longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, pad, *fmt == 'X');
            break;
        case 'p':
            kit_puts("0x");
            put_u64((uintptr_t)va_arg(ap, void *), 16, width, pad, false);
            break;
        case '%':
            kit_putc('%');
            break;
        case 0:
            return;
        default:
            kit_putc('%');
            kit_putc(*fmt);
            break;
        }
    }
}

void kit_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kit_vprintf(fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ boot info */
const struct hvm_start_info *kit_start_info(void)
{
    return start_info;
}

const char *kit_cmdline(void)
{
    if (!start_info || !start_info->cmdline_paddr || start_info->cmdline_paddr >= (1ull << 32))
        return "";
    return (const char *)(uintptr_t)start_info->cmdline_paddr;
}

/* Finds "key=" at the start of a space-separated word; returns the value. */
static const char *cmdline_find(const char *key)
{
    const char *p = kit_cmdline();
    size_t klen = strlen(key);
    while (*p) {
        while (*p == ' ')
            p++;
        if (!strncmp(p, key, klen) && p[klen] == '=')
            return p + klen + 1;
        while (*p && *p != ' ')
            p++;
    }
    return NULL;
}

uint64_t kit_cmdline_u64(const char *key, uint64_t def)
{
    const char *v = cmdline_find(key);
    if (!v || !*v || *v == ' ')
        return def;
    uint64_t r = 0;
    if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
        for (v += 2; *v && *v != ' '; v++) {
            char c = *v;
            unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                       : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                       : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 99;
            if (d > 15)
                return def;
            r = r * 16 + d;
        }
        return r;
    }
    for (; *v && *v != ' '; v++) {
        if (*v < '0' || *v > '9')
            return def;
        r = r * 10 + (uint64_t)(*v - '0');
    }
    return r;
}

bool kit_cmdline_str(const char *key, char *buf, size_t len)
{
    const char *v = cmdline_find(key);
    if (!v || !len)
        return false;
    size_t i = 0;
    while (v[i] && v[i] != ' ' && i + 1 < len) {
        buf[i] = v[i];
        i++;
    }
    buf[i] = 0;
    return true;
}

uint64_t kit_tsc_hz(void)
{
    uint32_t r[4];
    cpuid(0, 0, r);
    uint32_t max = r[0];
    if (max >= 0x15) {
        cpuid(0x15, 0, r);
        if (r[0] && r[1] && r[2])
            return (uint64_t)r[2] * r[1] / r[0];
    }
    if (max >= 0x16) {
        cpuid(0x16, 0, r);
        if (r[0] & 0xFFFF)
            return (uint64_t)(r[0] & 0xFFFF) * 1000000;
    }
    cpuid(0x40000000, 0, r);
    if (r[1] == 0x4b4d564b && r[0] >= 0x40000010) {    /* "KVMK" */
        cpuid(0x40000010, 0, r);
        if (r[0])
            return (uint64_t)r[0] * 1000;
    }
    return 0;
}

/* ------------------------------------------------------------------ outcome */
extern void kit_gate(uint32_t request);            /* runtime/entry.S */
extern void kit_r0_halt(void) KIT_NORETURN;
extern void kit_r0_triple_fault(void) KIT_NORETURN;

void kit_halt_forever(void)
{
    if (kit_cpl() == 0)
        kit_r0_halt();
    kit_gate(KIT_SYS_HALT);
    for (;;)
        cpu_relax();
}

void kit_triple_fault(void)
{
    if (kit_cpl() == 0)
        kit_r0_triple_fault();
    kit_gate(KIT_SYS_TRIPLE_FAULT);
    for (;;)
        cpu_relax();
}

static void short_delay(void)
{
    /* A few port reads (each a VM exit): lets a slow power-off take effect. */
    for (int i = 0; i < 2000; i++)
        (void)inb(0x80);
}

void kit_poweroff(void)
{
    const struct kit_acpi_info *a = kit_acpi();
    switch (a->off_method) {
    case KIT_OFF_SLEEP_CONTROL: {
        uint8_t v = (uint8_t)(((a->slp_typa & 7) << 2) | (1 << 5));
        kit_printf("KIT poweroff acpi sleep_control %s:0x%lx value=0x%x\n",
                   a->sleep_ctl_space ? "io" : "mem", a->sleep_ctl_addr, v);
        if (a->sleep_ctl_space == 1)
            outb((uint16_t)a->sleep_ctl_addr, v);
        else
            mmio_write8(a->sleep_ctl_addr, v);
        break;
    }
    case KIT_OFF_PM1: {
        uint16_t va = (uint16_t)(((a->slp_typa & 7) << 10) | (1 << 13));
        kit_printf("KIT poweroff acpi pm1a_cnt io:0x%x value=0x%x\n", a->pm1a_cnt, va);
        if (a->pm1b_cnt)
            outw((uint16_t)a->pm1b_cnt, (uint16_t)(((a->slp_typb & 7) << 10) | (1 << 13)));
        outw((uint16_t)a->pm1a_cnt, va);
        break;
    }
    default:
        kit_printf("KIT poweroff no acpi method (%s)\n", a->error ? a->error : "unknown");
        break;
    }
    short_delay();
    kit_puts("KIT poweroff failed\n");
    kit_halt_forever();
}

void kit_reboot(void)
{
    /* i8042: wait (bounded) for an empty input buffer, then pulse reset. */
    for (int i = 0; i < 10000 && (inb(0x64) & 0x02); i++)
        ;
    outb(0x64, 0xFE);
    short_delay();
    kit_puts("KIT reboot i8042 failed\n");
    const struct kit_acpi_info *a = kit_acpi();
    if (a->reset_supported && a->reset_addr) {
        kit_printf("KIT reboot acpi reset_reg %s:0x%lx value=0x%x\n",
                   a->reset_space ? "io" : "mem", a->reset_addr, a->reset_value);
        if (a->reset_space == 1)
            outb((uint16_t)a->reset_addr, a->reset_value);
        else if (a->reset_space == 0)
            mmio_write8(a->reset_addr, a->reset_value);
        short_delay();
    }
    kit_puts("KIT reboot failed\n");
    kit_halt_forever();
}

void kit_pass(void)
{
    kit_printf("KIT %s PASS\n", kit_name);
    kit_poweroff();
}

void kit_fail(const char *fmt, ...)
{
    va_list ap;
    kit_printf("KIT %s FAIL ", kit_name);
    va_start(ap, fmt);
    kit_vprintf(fmt, ap);
    va_end(ap);
    kit_putc('\n');
    kit_poweroff();
}

/* ------------------------------------------------------------------ traps */
struct kit_frame {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t vector, error;
    uint64_t rip, cs, rflags, rsp, ss;
};

static const char *const vector_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP",
    "#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23",
    "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
};

/* Runs at CPL0 (emulated: slow but fine for a one-off report). */
void kit_trap(struct kit_frame *f);
void kit_trap(struct kit_frame *f)
{
    static int depth;
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    if (depth++) {
        kit_printf("KIT nested exception vector=%lu rip=0x%lx\n", f->vector, f->rip);
        kit_r0_halt();
    }
    kit_printf("KIT exception vector=%lu (%s) error=0x%lx rip=0x%lx cs=0x%lx rflags=0x%lx rsp=0x%lx cr2=0x%lx\n",
               f->vector, f->vector < 32 ? vector_names[f->vector] : "irq", f->error, f->rip,
               f->cs, f->rflags, f->rsp, cr2);
    if ((int)f->vector == kit_expected_vector)
        kit_pass();
    kit_fail("exception vector=%lu rip=0x%lx", f->vector, f->rip);
}

/* ------------------------------------------------------------------ start */
void kit_start(uint32_t si);
KIT_NORETURN void kit_start(uint32_t si)
{
    for (char *p = __bss_start; p < __bss_end; p++)
        *p = 0;
    kit_expected_vector = -1;
    start_info_paddr = si;
    start_info = (const struct hvm_start_info *)(uintptr_t)si;
    kit_serial_init();
    kit_putc('\n');
    if (start_info->magic != HVM_START_MAGIC) {
        uint32_t magic = start_info->magic;
        start_info = NULL;
        kit_fail("bad hvm_start_info magic 0x%x at 0x%x", magic, si);
    }
    kit_printf("KIT %s boot start_info=0x%x version=%u cmdline=\"%s\"\n", kit_name, si,
               start_info->version, kit_cmdline());
    (void)kit_acpi();
    int r = kit_main();
    if (r == 0)
        kit_pass();
    kit_fail("main returned %d", r);
}
