/*
 * acpi: finds the RSDP, validates the checksums of the RSDP and of every
 * table reached from the XSDT/RSDT plus the DSDT, counts the MADT's enabled
 * Local APIC entries and reports the \_S5 / power-off method.
 *
 *   KIT acpi rsdp=0x... source=start_info|ebda|bios revision=R oem=XXXXXX checksum=ok
 *   KIT acpi table SIG addr=0x... length=L checksum=ok        (one per table)
 *   KIT acpi fadt flags=0x... hw_reduced=0|1
 *   KIT acpi s5 slp_typ=A,B
 *   KIT acpi poweroff=sleep_control io:0x600 | sleep_control mem:0x... | pm1a io:0x...
 *   KIT acpi lapic=0x... apic_ids=0,1,...
 *   KIT acpi cpus=N
 */
#include "kit.h"

KIT_PROGRAM("acpi");

int kit_main(void)
{
    const struct kit_acpi_info *a = kit_acpi();
    if (!a->rsdp)
        kit_fail("%s", a->error ? a->error : "no RSDP");
    kit_printf("KIT acpi rsdp=0x%lx source=%s revision=%u oem=%s checksum=%s\n", a->rsdp,
               a->rsdp_source, a->rsdp_revision, a->oem_id, a->rsdp_checksum_ok ? "ok" : "BAD");
    kit_printf("KIT acpi root=%s addr=0x%lx\n", a->root_is_xsdt ? "XSDT" : "RSDT", a->root);
    bool all_ok = a->rsdp_checksum_ok, have_dsdt = false;
    for (int i = 0; i < a->ntables; i++) {
        const struct kit_acpi_table *t = &a->tables[i];
        kit_printf("KIT acpi table %s addr=0x%lx length=%u checksum=%s\n", t->sig, t->addr, t->length,
                   t->checksum_ok ? "ok" : "BAD");
        all_ok &= t->checksum_ok;
        have_dsdt |= !memcmp(t->sig, "DSDT", 4);
    }
    if (a->state < 0)
        kit_fail("%s", a->error);
    if (!a->madt)
        kit_fail("no MADT");
    if (!have_dsdt)
        kit_fail("no DSDT");
    if (!all_ok)
        kit_fail("bad checksum");
    kit_printf("KIT acpi fadt flags=0x%x hw_reduced=%u\n", a->fadt_flags, a->hw_reduced);
    kit_printf("KIT acpi s5 slp_typ=%u,%u\n", a->slp_typa, a->slp_typb);
    if (a->off_method == KIT_OFF_SLEEP_CONTROL)
        kit_printf("KIT acpi poweroff=sleep_control %s:0x%lx\n", a->sleep_ctl_space ? "io" : "mem",
                   a->sleep_ctl_addr);
    else
        kit_printf("KIT acpi poweroff=pm1a io:0x%x\n", a->pm1a_cnt);
    if (a->reset_supported)
        kit_printf("KIT acpi reset_reg=%s:0x%lx value=0x%x\n", a->reset_space ? "io" : "mem",
                   a->reset_addr, a->reset_value);
    kit_printf("KIT acpi lapic=0x%lx apic_ids=", a->lapic_addr);
    for (int i = 0; i < a->cpus && i < KIT_ACPI_MAX_CPUS; i++)
        kit_printf(i ? ",%u" : "%u", a->apic_ids[i]);
    kit_printf(" disabled=%d\n", a->cpus_disabled);
    kit_printf("KIT acpi cpus=%d\n", a->cpus);
    if (a->cpus < 1)
        kit_fail("no enabled Local APIC in the MADT");
    return 0;
}
