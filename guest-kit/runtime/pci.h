/*
 * Swiftlet guest kit: PCI configuration access and BAR set-up (ring 3).
 *
 * Configuration space through ECAM when the ACPI MCFG names one (segment 0),
 * else through ports 0xCF8/0xCFC, else through ECAM at "pci_ecam=ADDR"
 * (default 0xE0000000) if a function answers there: QEMU microvm announces
 * its ECAM only in the DSDT. "pci=cf8" / "pci=ecam" force one. Only bus 0 is scanned (Swiftlet and QEMU
 * microvm put every device there). BARs the firmware/VMM left at zero (QEMU
 * microvm has no firmware PCI set-up), or placed above the 4 GiB identity
 * map, are assigned from the 32-bit window given by "pci_mmio=BASE" and
 * "pci_mmio_size=SIZE" on the command line (default 0xC0000000 + 512 MiB,
 * QEMU microvm's window; Swiftlet's is its first 256 MiB, below its
 * virtio-mmio pages at 0xD0000000, and Swiftlet assigns every BAR itself).
 */
#ifndef KIT_PCI_H
#define KIT_PCI_H

#include "kit.h"

#define PCI_MAX_BARS 6

struct pci_dev {
    uint8_t bus, dev, fn;
    uint16_t vendor, device;
    uint8_t class_code, subclass;
    uint64_t bar[PCI_MAX_BARS];         /* address (0: none) */
    uint64_t bar_size[PCI_MAX_BARS];
    bool bar_io[PCI_MAX_BARS];
};

/* "ecam-mcfg", "cf8" or "ecam-probed" (after pci_init); NULL if no configuration access. */
const char *pci_access_method(void);
uint64_t pci_ecam_base(void);
/* Finds the configuration mechanism; false (and a KIT line) if none. */
bool pci_init(void);

uint8_t pci_read8(const struct pci_dev *d, uint16_t off);
uint16_t pci_read16(const struct pci_dev *d, uint16_t off);
uint32_t pci_read32(const struct pci_dev *d, uint16_t off);
void pci_write16(const struct pci_dev *d, uint16_t off, uint16_t v);
void pci_write32(const struct pci_dev *d, uint16_t off, uint32_t v);

/* Calls fn for every function on bus 0; stops when fn returns true. */
void pci_scan(bool (*fn)(const struct pci_dev *d, void *arg), void *arg);
/* Prints one "KIT <name> pci ..." line per function on bus 0. */
void pci_list(void);
/* The index-th function (0-based) with this vendor/device ID. */
bool pci_find(uint16_t vendor, uint16_t device, int index, struct pci_dev *out);
/* Sizes every BAR, assigns the unassigned ones, enables memory space (and
   I/O space if there are I/O BARs) and bus mastering. */
bool pci_setup_bars(struct pci_dev *d);
/* Walks the capability list: offset of the next capability with this ID
   after `after` (0: from the start), or 0. */
uint8_t pci_find_cap(const struct pci_dev *d, uint8_t id, uint8_t after);

#endif
