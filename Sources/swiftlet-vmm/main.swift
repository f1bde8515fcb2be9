print("swiftlet-vmm: not yet")
