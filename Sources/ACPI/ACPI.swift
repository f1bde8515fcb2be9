// The ACPI module: the firmware tables an x86_64 guest reads to find its
// CPUs, interrupt controllers, devices and power-off register, built as plain
// bytes. Nothing here touches guest memory or the host: the VMM decides the
// addresses, calls `ACPITables.build`, and copies the result into the guest.
//
// Files: ACPIConfiguration (inputs), ACPIError, ACPITables (layout of the
// blob), TableHeader (header, checksum, generic address structure), one file
// per table (RSDP, XSDT, FADT, MADT, DSDT, MCFG), and AML (the encoder the
// DSDT is written with). See docs/acpi.md.
