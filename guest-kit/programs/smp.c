/*
 * smp: starts every application processor listed in the MADT with
 * INIT-SIPI-SIPI (xAPIC ICR, MMIO from ring 3) and counts how many reach long
 * mode. The AP trampoline (runtime/ap.S) is copied to 0x8000 (SIPI vector
 * 0x08); each AP records its APIC ID, atomically increments a counter and
 * halts with interrupts off.
 *
 *   KIT smp bsp_apic_id=B lapic=0x... tsc_hz=H
 *   KIT smp ap apic_id=I started                       (per AP, once online)
 *   KIT smp cpus=N online=M
 */
#include "kit.h"

KIT_PROGRAM("smp");

extern char kit_ap_tramp_start[], kit_ap_tramp_end[];
extern volatile uint32_t kit_ap_online;
extern volatile uint8_t kit_ap_seen[256];

#define LAPIC_ID      0x020
#define LAPIC_SVR     0x0F0
#define LAPIC_ESR     0x280
#define LAPIC_ICR_LO  0x300
#define LAPIC_ICR_HI  0x310

static uint64_t tsc_hz;

static void delay_us(uint64_t us)
{
    uint64_t start = rdtsc(), cycles = us * (tsc_hz / 1000000);
    while (rdtsc() - start < cycles)
        cpu_relax();
}

static bool send_ipi(uint64_t lapic, uint32_t apic_id, uint32_t icr_lo)
{
    mmio_write32(lapic + LAPIC_ICR_HI, apic_id << 24);
    mmio_write32(lapic + LAPIC_ICR_LO, icr_lo);
    for (int i = 0; i < 1000000; i++)
        if (!(mmio_read32(lapic + LAPIC_ICR_LO) & (1u << 12)))     /* delivery status */
            return true;
    return false;
}

int kit_main(void)
{
    const struct kit_acpi_info *a = kit_acpi();
    if (!a->madt)
        kit_fail("no MADT");
    uint64_t lapic = a->lapic_addr ? a->lapic_addr : 0xFEE00000;
    tsc_hz = kit_tsc_hz();
    uint64_t hz = tsc_hz ? tsc_hz : 3000000000ull;  /* unknown: assume 3 GHz */
    tsc_hz = hz;

    uint32_t bsp = mmio_read32(lapic + LAPIC_ID) >> 24;
    kit_printf("KIT smp bsp_apic_id=%u lapic=0x%lx tsc_hz=%lu madt_cpus=%d\n", bsp, lapic, kit_tsc_hz(),
               a->cpus);

    /* Software-enable the local APIC (spurious vector 0xFF). */
    mmio_write32(lapic + LAPIC_SVR, mmio_read32(lapic + LAPIC_SVR) | 0x1FF);
    mmio_write32(lapic + LAPIC_ESR, 0);

    memcpy((void *)(uintptr_t)KIT_AP_TRAMPOLINE, kit_ap_tramp_start,
           (size_t)(kit_ap_tramp_end - kit_ap_tramp_start));

    int aps = 0;
    for (int i = 0; i < a->cpus && i < KIT_ACPI_MAX_CPUS; i++) {
        uint32_t id = a->apic_ids[i];
        if (id == bsp)
            continue;
        if (id > 255)
            kit_fail("APIC ID %u needs x2APIC", id);
        aps++;
        if (!send_ipi(lapic, id, 0x00004500))                   /* INIT, level assert */
            kit_fail("INIT to APIC ID %u not delivered", id);
    }
    delay_us(10000);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < a->cpus && i < KIT_ACPI_MAX_CPUS; i++) {
            uint32_t id = a->apic_ids[i];
            if (id == bsp)
                continue;
            if (!send_ipi(lapic, id, 0x00004600 | (KIT_AP_TRAMPOLINE >> 12)))  /* SIPI */
                kit_fail("SIPI to APIC ID %u not delivered", id);
        }
        delay_us(200);
    }

    /* Wait (at most ~5 s) for every AP to check in. */
    uint64_t start = rdtsc(), limit = 5 * hz;
    while (kit_ap_online < (uint32_t)aps && rdtsc() - start < limit)
        cpu_relax();
    uint64_t waited = rdtsc() - start;
    uint32_t online = kit_ap_online;
    for (int id = 0; id < 256; id++)
        if (kit_ap_seen[id])
            kit_printf("KIT smp ap apic_id=%d started\n", id);
    kit_printf("KIT smp wait_cycles=%lu\n", waited);
    kit_printf("KIT smp cpus=%d online=%u\n", a->cpus, online + 1);
    if ((int)online + 1 != a->cpus)
        kit_fail("only %u of %d CPUs online", online + 1, a->cpus);
    return 0;
}
