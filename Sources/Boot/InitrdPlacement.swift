import GuestMemory

/// Where an initrd was put in guest memory.
public struct InitrdLocation: Equatable, Sendable {
    public let address: GuestAddress
    public let size: UInt64

    public init(address: GuestAddress, size: UInt64) {
        self.address = address
        self.size = size
    }
}

/// Chooses where the initrd goes. Linux (and boot loaders like GRUB) put it as
/// high as allowed so it stays clear of the kernel's decompression and early
/// allocations, which grow upward from the kernel.
public enum InitrdPlacement {
    static let pageSize: UInt64 = 0x1000

    /// The highest page-aligned address where `size` bytes fit inside one RAM
    /// range, at or above `kernelEnd`, with the last byte at or below
    /// `maxAddress` (bzImage `initrd_addr_max`, or 4 GiB - 1 for PVH).
    public static func place(
        size: UInt64,
        ramRanges: [(start: GuestAddress, size: UInt64)],
        kernelEnd: GuestAddress,
        maxAddress: GuestAddress
    ) throws(BootError) -> GuestAddress {
        guard size > 0 else { throw .initrdEmpty }
        // The exclusive upper bound; saturates when maxAddress is the top of the address space.
        let limit = maxAddress.rawValue == .max ? UInt64.max : maxAddress.rawValue + 1
        let floor = kernelEnd.alignedUp(to: pageSize)?.rawValue ?? UInt64.max
        var best: UInt64?
        var largestGap: UInt64 = 0
        for range in ramRanges {
            let rangeEnd = range.start.adding(range.size)?.rawValue ?? UInt64.max
            let low = max(range.start.alignedUp(to: pageSize)?.rawValue ?? UInt64.max, floor)
            let high = min(rangeEnd, limit)
            guard low < high else { continue }
            // low is page-aligned, so rounding the start down never passes it.
            largestGap = max(largestGap, high - low)
            guard size <= high - low else { continue }
            best = max(best ?? 0, (high - size) & ~(pageSize - 1))
        }
        guard let best else {
            throw .initrdDoesNotFit(size: size, kernelEnd: kernelEnd, maxAddress: maxAddress, largestGap: largestGap)
        }
        return GuestAddress(best)
    }

    /// Places `initrd` as `place` does within `memory`'s regions and copies it there.
    public static func load(
        _ initrd: [UInt8], into memory: GuestMemory, kernelEnd: GuestAddress, maxAddress: GuestAddress
    ) throws(BootError) -> InitrdLocation {
        let size = UInt64(initrd.count)
        let address = try place(size: size, ramRanges: memory.regions.map { ($0.start, $0.size) },
                                kernelEnd: kernelEnd, maxAddress: maxAddress)
        do {
            try memory.write(bytes: initrd, at: address)
        } catch {
            throw error.during("loading the initrd at \(address)")
        }
        return InitrdLocation(address: address, size: size)
    }
}
