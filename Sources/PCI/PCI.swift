// PCI: configuration space, the host bridge (0xCF8/0xCFC and ECAM), BAR
// allocation and MSI-X. Filled in by the VirtIO-over-PCI work (issue #4).
