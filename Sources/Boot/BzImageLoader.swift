import GuestMemory

/// Loads the protected-mode part of a bzImage for the 64-bit boot protocol.
/// The real-mode setup code is never run (the VMM enters in long mode), so
/// only the part after the setup sectors goes into guest memory.
enum BzImageLoader {
    /// The 64-bit entry point's distance from the load address (boot.rst).
    static let entry64Offset: UInt64 = 0x200

    /// True if the image carries any bzImage marker; the parser then says
    /// precisely what is wrong with it. Real images start with "MZ" (EFI stub).
    static func looksLikeBzImage(_ image: [UInt8]) -> Bool {
        image.starts(with: [0x4D, 0x5A])
            || image.readLE(UInt16.self, at: 0x1FE) == SetupHeader.bootFlag
            || image.readLE(UInt32.self, at: 0x202) == SetupHeader.magic
    }

    static func load(
        image: [UInt8], into memory: GuestMemory, highMemoryStart: GuestAddress
    ) throws(BootError) -> LoadedKernel {
        let header = try SetupHeader.parse(image)
        // parse() checked the file is longer than the setup.
        let payload = image[header.setupSize...]
        // The kernel decompresses in place and needs init_size bytes from its
        // load address; the raw payload could in principle be larger.
        let footprint = max(UInt64(header.initSize), UInt64(payload.count))

        var candidates: [GuestAddress] = []
        let preferred = GuestAddress(header.preferredAddress)
        if preferred >= highMemoryStart {
            candidates.append(preferred)
        }
        if header.relocatable,
           let aligned = highMemoryStart.alignedUp(to: UInt64(header.kernelAlignment)),
           !candidates.contains(aligned) {
            candidates.append(aligned)
        }
        guard let loadAddress = candidates.first(where: { memory.contains($0, length: footprint) }),
              let kernelEnd = loadAddress.adding(footprint),
              let entry = loadAddress.adding(entry64Offset)
        else {
            throw .bzImageDoesNotFit(footprint: footprint, tried: candidates)
        }
        do {
            try memory.write(bytes: payload, at: loadAddress)
        } catch {
            throw error.during("loading the bzImage kernel at \(loadAddress)")
        }
        return LoadedKernel(entry: .linux64(entry: entry, setupHeader: header),
                            loadAddress: loadAddress, kernelEnd: kernelEnd)
    }
}
