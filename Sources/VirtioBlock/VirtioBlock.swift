// VirtioBlock: filled in by the VirtIO-over-PCI work (issue #4).
