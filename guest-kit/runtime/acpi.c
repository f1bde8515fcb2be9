/* Swiftlet guest kit: ACPI table discovery (RSDP, XSDT/RSDT, FADT, MADT,
   DSDT \_S5) for power-off, reset and CPU enumeration. Runs in ring 3. */
#include "kit.h"

static struct kit_acpi_info info;

#define LIMIT_4G (1ull << 32)

static inline uint8_t rd8(uint64_t a) { return *(const volatile uint8_t *)(uintptr_t)a; }
static inline uint16_t rd16(uint64_t a) { return (uint16_t)(rd8(a) | (rd8(a + 1) << 8)); }
static inline uint32_t rd32(uint64_t a) { return rd16(a) | ((uint32_t)rd16(a + 2) << 16); }
static inline uint64_t rd64(uint64_t a) { return rd32(a) | ((uint64_t)rd32(a + 4) << 32); }

bool kit_acpi_checksum(uint64_t addr, uint32_t len)
{
    uint8_t sum = 0;
    for (uint32_t i = 0; i < len; i++)
        sum = (uint8_t)(sum + rd8(addr + i));
    return sum == 0;
}

static bool is_rsdp(uint64_t a)
{
    return !memcmp((const void *)(uintptr_t)a, "RSD PTR ", 8) && kit_acpi_checksum(a, 20);
}

static uint64_t scan_rsdp(uint64_t start, uint64_t end)
{
    for (uint64_t a = start; a + 20 <= end; a += 16)
        if (is_rsdp(a))
            return a;
    return 0;
}

static bool plausible(uint64_t addr, uint32_t min_len)
{
    return addr && addr < LIMIT_4G && addr + min_len < LIMIT_4G;
}

/* Records a table (signature, length, checksum); returns its length or 0. */
static uint32_t add_table(uint64_t addr)
{
    if (!plausible(addr, 36))
        return 0;
    uint32_t len = rd32(addr + 4);
    if (len < 36 || len > (64u << 20))
        return 0;
    if (info.ntables < KIT_ACPI_MAX_TABLES) {
        struct kit_acpi_table *t = &info.tables[info.ntables++];
        memcpy(t->sig, (const void *)(uintptr_t)addr, 4);
        t->sig[4] = 0;
        t->addr = addr;
        t->length = len;
        t->checksum_ok = kit_acpi_checksum(addr, len);
    }
    return len;
}

static bool sig_is(uint64_t addr, const char *sig)
{
    return !memcmp((const void *)(uintptr_t)addr, sig, 4);
}

/* AML integer data object at p (ZeroOp, OneOp, OnesOp, Byte/Word/DWord prefix). */
static bool aml_small_int(uint64_t p, uint64_t end, uint8_t *out, uint64_t *next)
{
    if (p >= end)
        return false;
    switch (rd8(p)) {
    case 0x00: *out = 0; *next = p + 1; return true;
    case 0x01: *out = 1; *next = p + 1; return true;
    case 0xFF: *out = 0xFF; *next = p + 1; return true;
    case 0x0A: if (p + 2 > end) return false; *out = rd8(p + 1); *next = p + 2; return true;
    case 0x0B: if (p + 3 > end) return false; *out = rd8(p + 1); *next = p + 3; return true;
    case 0x0C: if (p + 5 > end) return false; *out = rd8(p + 1); *next = p + 5; return true;
    default: return false;
    }
}

/* Finds Name(_S5_, Package(){ SLP_TYPa, SLP_TYPb, ... }) in an AML table. */
static bool find_s5(uint64_t table, uint32_t len)
{
    uint64_t end = table + len;
    for (uint64_t p = table + 36; p + 8 <= end; p++) {
        if (rd8(p) != '_' || rd8(p + 1) != 'S' || rd8(p + 2) != '5' || rd8(p + 3) != '_')
            continue;
        uint64_t q = p + 4;
        if (rd8(q) != 0x12)                     /* PackageOp */
            continue;
        q++;
        q += 1 + (rd8(q) >> 6);                 /* PkgLength */
        uint8_t elements = rd8(q++);            /* NumElements */
        uint8_t a, b;
        uint64_t n;
        if (!elements || !aml_small_int(q, end, &a, &n))
            continue;
        if (elements < 2 || !aml_small_int(n, end, &b, &n))
            b = a;
        info.slp_typa = a;
        info.slp_typb = b;
        return true;
    }
    return false;
}

static void parse_madt(uint64_t madt, uint32_t len)
{
    info.lapic_addr = rd32(madt + 36);
    for (uint64_t p = madt + 44; p + 2 <= madt + len;) {
        uint8_t type = rd8(p), elen = rd8(p + 1);
        if (elen < 2)
            break;
        if (type == 0 && elen >= 8) {           /* Processor Local APIC */
            if (rd32(p + 4) & 1) {
                if (info.cpus < KIT_ACPI_MAX_CPUS)
                    info.apic_ids[info.cpus] = rd8(p + 3);
                info.cpus++;
            } else {
                info.cpus_disabled++;
            }
        } else if (type == 9 && elen >= 16) {   /* Processor Local x2APIC */
            if (rd32(p + 8) & 1) {
                if (info.cpus < KIT_ACPI_MAX_CPUS)
                    info.apic_ids[info.cpus] = rd32(p + 4);
                info.cpus++;
            } else {
                info.cpus_disabled++;
            }
        } else if (type == 5 && elen >= 12) {   /* Local APIC address override */
            info.lapic_addr = rd64(p + 4);
        }
        p += elen;
    }
}

static void parse_fadt(uint64_t fadt, uint32_t len)
{
    info.fadt_flags = len >= 116 ? rd32(fadt + 112) : 0;
    info.hw_reduced = (info.fadt_flags >> 20) & 1;
    uint64_t dsdt = 0;
    if (len >= 148)
        dsdt = rd64(fadt + 140);                /* X_DSDT */
    if (!dsdt)
        dsdt = rd32(fadt + 40);                 /* DSDT */
    info.dsdt = dsdt;
    if (len >= 129 && ((info.fadt_flags >> 10) & 1)) {  /* RESET_REG_SUP */
        info.reset_supported = true;
        info.reset_space = rd8(fadt + 116);
        info.reset_addr = rd64(fadt + 120);
        info.reset_value = rd8(fadt + 128);
    }
    if (len >= 256 && rd64(fadt + 248)) {       /* SLEEP_CONTROL_REG */
        info.sleep_ctl_space = rd8(fadt + 244);
        info.sleep_ctl_addr = rd64(fadt + 248);
    }
    uint32_t pm1a = len >= 68 ? rd32(fadt + 64) : 0;
    uint32_t pm1b = len >= 72 ? rd32(fadt + 68) : 0;
    if (len >= 184 && rd8(fadt + 172) == 1 && rd64(fadt + 176))  /* X_PM1a_CNT_BLK, I/O */
        pm1a = (uint32_t)rd64(fadt + 176);
    if (len >= 196 && rd8(fadt + 184) == 1 && rd64(fadt + 188))  /* X_PM1b_CNT_BLK, I/O */
        pm1b = (uint32_t)rd64(fadt + 188);
    info.pm1a_cnt = pm1a;
    info.pm1b_cnt = pm1b;
}

static const char *parse(void)
{
    const struct hvm_start_info *si = kit_start_info();
    uint64_t rsdp = 0;
    if (si && si->version >= 1 && is_rsdp(si->rsdp_paddr)) {
        rsdp = si->rsdp_paddr;
        info.rsdp_source = "start_info";
    }
    if (!rsdp) {
        uint64_t ebda = (uint64_t)rd16(0x40E) << 4;
        if (ebda >= 0x80000 && ebda < 0xA0000 && (rsdp = scan_rsdp(ebda, ebda + 1024)))
            info.rsdp_source = "ebda";
    }
    if (!rsdp && (rsdp = scan_rsdp(0xE0000, 0x100000)))
        info.rsdp_source = "bios";
    if (!rsdp)
        return "no RSDP";
    info.rsdp = rsdp;
    info.rsdp_revision = rd8(rsdp + 15);
    memcpy(info.oem_id, (const void *)(uintptr_t)(rsdp + 9), 6);
    info.oem_id[6] = 0;
    info.rsdp_checksum_ok = kit_acpi_checksum(rsdp, 20) &&
        (info.rsdp_revision < 2 || kit_acpi_checksum(rsdp, rd32(rsdp + 20)));

    uint64_t xsdt = info.rsdp_revision >= 2 ? rd64(rsdp + 24) : 0;
    uint64_t root = plausible(xsdt, 36) ? xsdt : rd32(rsdp + 16);
    info.root_is_xsdt = root == xsdt;
    info.root = root;
    uint32_t rlen = add_table(root);
    if (!rlen)
        return "bad RSDT/XSDT";
    unsigned esize = info.root_is_xsdt ? 8 : 4;
    for (uint64_t e = root + 36; e + esize <= root + rlen; e += esize) {
        uint64_t t = esize == 8 ? rd64(e) : rd32(e);
        uint32_t len = add_table(t);
        if (!len)
            continue;
        if (sig_is(t, "FACP") && !info.fadt) {
            info.fadt = t;
            parse_fadt(t, len);
        } else if (sig_is(t, "APIC") && !info.madt) {
            info.madt = t;
            parse_madt(t, len);
        }
    }
    if (!info.fadt)
        return "no FADT";
    uint32_t dlen = add_table(info.dsdt);
    if (!dlen || !sig_is(info.dsdt, "DSDT"))
        return "no DSDT";
    info.s5_found = find_s5(info.dsdt, dlen);
    for (int i = 0; !info.s5_found && i < info.ntables; i++)
        if (!memcmp(info.tables[i].sig, "SSDT", 4))
            info.s5_found = find_s5(info.tables[i].addr, info.tables[i].length);
    if (!info.s5_found)
        return "no \\_S5";
    if (info.hw_reduced && info.sleep_ctl_addr && info.sleep_ctl_space <= 1)
        info.off_method = KIT_OFF_SLEEP_CONTROL;
    else if (info.pm1a_cnt && info.pm1a_cnt < 0x10000)
        info.off_method = KIT_OFF_PM1;
    else
        return "no sleep control or PM1a control register";
    return NULL;
}

const struct kit_acpi_info *kit_acpi(void)
{
    if (info.state == 0) {
        info.error = parse();
        info.state = info.error ? -1 : 1;
    }
    return &info;
}
