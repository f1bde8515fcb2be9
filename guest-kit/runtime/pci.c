/* Swiftlet guest kit: PCI configuration access and BAR set-up. Ring 3. */
#include "pci.h"

static uint64_t ecam;           /* bus 0 base, 0 if none */
static uint8_t ecam_end_bus;
static const char *method;

static uint64_t window_next, window_end;

const char *pci_access_method(void) { return method; }
uint64_t pci_ecam_base(void) { return ecam; }

static uint64_t rd64(uint64_t a) { return *(const volatile uint32_t *)(uintptr_t)a |
                                          ((uint64_t)*(const volatile uint32_t *)(uintptr_t)(a + 4) << 32); }

static uint64_t find_mcfg(void)
{
    const struct kit_acpi_info *a = kit_acpi();
    for (int i = 0; i < a->ntables; i++) {
        const struct kit_acpi_table *t = &a->tables[i];
        if (memcmp(t->sig, "MCFG", 4) || !t->checksum_ok)
            continue;
        /* header (36) + 8 reserved, then 16-byte allocations */
        for (uint32_t off = 44; off + 16 <= t->length; off += 16) {
            uint64_t base = rd64(t->addr + off);
            uint16_t seg = *(const volatile uint16_t *)(uintptr_t)(t->addr + off + 8);
            uint8_t start = *(const volatile uint8_t *)(uintptr_t)(t->addr + off + 10);
            uint8_t end = *(const volatile uint8_t *)(uintptr_t)(t->addr + off + 11);
            if (seg == 0 && start == 0 && base && base < (1ull << 32)) {
                ecam_end_bus = end;
                return base;
            }
        }
    }
    return 0;
}

bool pci_init(void)
{
    if (method)
        return true;
    char force[8] = "";
    kit_cmdline_str("pci", force, sizeof force);        /* pci=cf8 | pci=ecam */
    if (strncmp(force, "cf8", 4))
        ecam = find_mcfg();
    if (ecam) {
        method = "ecam-mcfg";
    } else if (strncmp(force, "ecam", 5)) {
        outl(0xCF8, 0x80000000u);
        if (inl(0xCF8) == 0x80000000u && inl(0xCFC) != 0xFFFFFFFFu)
            method = "cf8";
        outl(0xCF8, 0);
    }
    if (!method && strncmp(force, "cf8", 4)) {
        /* No MCFG (QEMU microvm describes its ECAM only in the DSDT): try
           the known ECAM address, 0xE0000000 on Swiftlet and microvm. */
        uint64_t guess = kit_cmdline_u64("pci_ecam", 0xE0000000ull);
        uint32_t id = mmio_read32(guess);
        if (id != 0xFFFFFFFFu && id != 0 && guess < (1ull << 32)) {
            ecam = guess;
            ecam_end_bus = 0;
            method = "ecam-probed";
        }
    }
    window_next = kit_cmdline_u64("pci_mmio", 0xC0000000ull);
    window_end = window_next + kit_cmdline_u64("pci_mmio_size", 0x20000000ull);
    if (!method) {
        kit_printf("KIT %s pci no configuration access (no MCFG, no 0xCF8)\n", kit_name);
        return false;
    }
    kit_printf("KIT %s pci access=%s ecam=0x%lx end_bus=%u\n", kit_name, method, ecam, ecam_end_bus);
    return true;
}

static uint64_t ecam_addr(const struct pci_dev *d, uint16_t off)
{
    return ecam + ((uint64_t)d->bus << 20) + ((uint64_t)d->dev << 15) + ((uint64_t)d->fn << 12) + off;
}

static void cf8_select(const struct pci_dev *d, uint16_t off)
{
    outl(0xCF8, 0x80000000u | ((uint32_t)d->bus << 16) | ((uint32_t)d->dev << 11) |
                ((uint32_t)d->fn << 8) | (off & 0xFC));
}

uint32_t pci_read32(const struct pci_dev *d, uint16_t off)
{
    if (ecam)
        return mmio_read32(ecam_addr(d, off));
    cf8_select(d, off);
    return inl(0xCFC);
}

uint16_t pci_read16(const struct pci_dev *d, uint16_t off)
{
    if (ecam)
        return mmio_read16(ecam_addr(d, off));
    cf8_select(d, off);
    return inw((uint16_t)(0xCFC + (off & 2)));
}

uint8_t pci_read8(const struct pci_dev *d, uint16_t off)
{
    if (ecam)
        return mmio_read8(ecam_addr(d, off));
    cf8_select(d, off);
    return inb((uint16_t)(0xCFC + (off & 3)));
}

void pci_write32(const struct pci_dev *d, uint16_t off, uint32_t v)
{
    if (ecam) {
        mmio_write32(ecam_addr(d, off), v);
        return;
    }
    cf8_select(d, off);
    outl(0xCFC, v);
}

void pci_write16(const struct pci_dev *d, uint16_t off, uint16_t v)
{
    if (ecam) {
        mmio_write16(ecam_addr(d, off), v);
        return;
    }
    cf8_select(d, off);
    outw((uint16_t)(0xCFC + (off & 2)), v);
}

void pci_scan(bool (*fn)(const struct pci_dev *d, void *arg), void *arg)
{
    if (!pci_init())
        return;
    for (uint8_t dev = 0; dev < 32; dev++) {
        for (uint8_t fn_no = 0; fn_no < 8; fn_no++) {
            struct pci_dev d = { .bus = 0, .dev = dev, .fn = fn_no };
            uint32_t id = pci_read32(&d, 0);
            if ((id & 0xFFFF) == 0xFFFF || id == 0) {
                if (fn_no == 0)
                    break;
                continue;
            }
            d.vendor = (uint16_t)id;
            d.device = (uint16_t)(id >> 16);
            uint32_t cls = pci_read32(&d, 8);
            d.class_code = (uint8_t)(cls >> 24);
            d.subclass = (uint8_t)(cls >> 16);
            if (fn(&d, arg))
                return;
            /* Header type bit 7: multi-function. */
            if (fn_no == 0 && !(pci_read8(&d, 0x0E) & 0x80))
                break;
        }
    }
}

static bool list_one(const struct pci_dev *d, void *arg)
{
    (void)arg;
    kit_printf("KIT %s pci %02x:%02x.%x id=%04x:%04x class=%02x%02x\n", kit_name, d->bus, d->dev,
               d->fn, d->vendor, d->device, d->class_code, d->subclass);
    return false;
}

void pci_list(void)
{
    pci_scan(list_one, NULL);
}

struct find_arg {
    uint16_t vendor, device;
    int index;
    struct pci_dev *out;
    bool found;
};

static bool find_one(const struct pci_dev *d, void *arg)
{
    struct find_arg *f = arg;
    if (d->vendor != f->vendor || d->device != f->device)
        return false;
    if (f->index-- > 0)
        return false;
    *f->out = *d;
    f->found = true;
    return true;
}

bool pci_find(uint16_t vendor, uint16_t device, int index, struct pci_dev *out)
{
    struct find_arg f = { vendor, device, index, out, false };
    pci_scan(find_one, &f);
    return f.found;
}

uint8_t pci_find_cap(const struct pci_dev *d, uint8_t id, uint8_t after)
{
    if (!(pci_read16(d, 0x06) & 0x10))          /* status: capability list */
        return 0;
    uint8_t p = after ? pci_read8(d, (uint16_t)(after + 1)) : pci_read8(d, 0x34);
    for (int guard = 0; p >= 0x40 && guard < 48; guard++) {
        p &= 0xFC;
        if (pci_read8(d, p) == id)
            return p;
        p = pci_read8(d, (uint16_t)(p + 1));
    }
    return 0;
}

/* Reads and sizes every BAR (decoding off while sizing). */
static void size_bars(struct pci_dev *d)
{
    for (int i = 0; i < PCI_MAX_BARS; i++) {
        uint16_t off = (uint16_t)(0x10 + 4 * i);
        uint32_t orig = pci_read32(d, off);
        pci_write32(d, off, 0xFFFFFFFFu);
        uint32_t mask = pci_read32(d, off);
        pci_write32(d, off, orig);
        d->bar[i] = 0;
        d->bar_size[i] = 0;
        d->bar_io[i] = false;
        if (!mask)
            continue;
        if (orig & 1) {                         /* I/O BAR */
            uint32_t m = mask & ~3u;
            if (!m)
                continue;
            d->bar_io[i] = true;
            d->bar_size[i] = (uint64_t)(~m & 0xFFFF) + 1;
            d->bar[i] = orig & ~3u;
            continue;
        }
        bool is64 = ((orig >> 1) & 3) == 2;
        uint64_t m = mask & ~0xFull;
        uint64_t addr = orig & ~0xFull;
        if (is64 && i + 1 < PCI_MAX_BARS) {
            uint16_t hoff = (uint16_t)(off + 4);
            uint32_t horig = pci_read32(d, hoff);
            pci_write32(d, hoff, 0xFFFFFFFFu);
            uint32_t hmask = pci_read32(d, hoff);
            pci_write32(d, hoff, horig);
            m |= (uint64_t)hmask << 32;
            addr |= (uint64_t)horig << 32;
        } else {
            m |= 0xFFFFFFFF00000000ull;
        }
        if (m & 0xFFFFFFF0ull || (m >> 32)) {
            d->bar_size[i] = ~m + 1;
            d->bar[i] = addr;
        }
        if (is64) {
            i++;                                /* the upper half */
            if (i < PCI_MAX_BARS) {
                d->bar[i] = 0;
                d->bar_size[i] = 0;
            }
        }
    }
}

bool pci_setup_bars(struct pci_dev *d)
{
    uint16_t cmd = pci_read16(d, 0x04);
    pci_write16(d, 0x04, cmd & ~0x3);           /* decoding off while sizing */
    size_bars(d);
    bool any_io = false;
    for (int i = 0; i < PCI_MAX_BARS; i++) {
        if (!d->bar_size[i])
            continue;
        if (d->bar_io[i]) {
            any_io = true;
            continue;
        }
        /* Keep a VMM-assigned BAR if it is reachable (below 4 GiB); move
           window_next past it so our own assignments never overlap it. */
        if (d->bar[i] && d->bar[i] + d->bar_size[i] <= (1ull << 32)) {
            if (d->bar[i] >= window_next && d->bar[i] < window_end)
                window_next = d->bar[i] + d->bar_size[i];
            continue;
        }
    }
    for (int i = 0; i < PCI_MAX_BARS; i++) {
        if (!d->bar_size[i] || d->bar_io[i])
            continue;
        if (d->bar[i] && d->bar[i] + d->bar_size[i] <= (1ull << 32))
            continue;
        uint64_t size = d->bar_size[i];
        uint64_t a = (window_next + size - 1) & ~(size - 1);
        if (a + size > window_end) {
            kit_printf("KIT %s pci BAR%d of %lu bytes does not fit the window\n", kit_name, i, size);
            return false;
        }
        window_next = a + size;
        uint16_t off = (uint16_t)(0x10 + 4 * i);
        uint32_t low = pci_read32(d, off) & 0xF;
        pci_write32(d, off, (uint32_t)a | low);
        if (((low >> 1) & 3) == 2)
            pci_write32(d, (uint16_t)(off + 4), 0);
        d->bar[i] = a;
        kit_printf("KIT %s pci %02x:%02x.%x BAR%d assigned 0x%lx size 0x%lx\n", kit_name, d->bus,
                   d->dev, d->fn, i, a, size);
    }
    /* memory space, bus master (and I/O space when there are I/O BARs) */
    pci_write16(d, 0x04, (uint16_t)(cmd | 0x2 | 0x4 | (any_io ? 0x1 : 0)));
    return true;
}
