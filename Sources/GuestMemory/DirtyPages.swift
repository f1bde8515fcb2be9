import CKVM

/// The guest pages the VMM itself wrote (devices filling buffers, used rings,
/// the boot loader), one bit per 4 KiB page per region: KVM's dirty log sees
/// only the guest's own writes, and a diff snapshot needs both.
final class DirtyPageBitmap: @unchecked Sendable {
    // @unchecked: the words are only touched through ckvm's atomic helpers.
    static let pageSize: UInt64 = 4096
    let words: [UnsafeMutablePointer<UInt64>]
    let wordCounts: [Int]

    init(regionSizes: [UInt64]) {
        wordCounts = regionSizes.map { Int(($0 + Self.pageSize - 1) / Self.pageSize + 63) / 64 }
        words = wordCounts.map { count in
            let pointer = UnsafeMutablePointer<UInt64>.allocate(capacity: max(count, 1))
            pointer.initialize(repeating: 0, count: max(count, 1))
            return pointer
        }
    }

    deinit {
        for pointer in words { pointer.deallocate() }
    }

    /// Marks the pages of `[offset, offset + length)` in region `index` (in bounds: checked by the caller).
    func mark(region index: Int, offset: UInt64, length: UInt64) {
        guard length > 0 else { return }
        let first = offset / Self.pageSize, last = (offset + length - 1) / Self.pageSize
        for page in first...last {
            // SAFETY: page < region size / page size, so page / 64 < wordCounts[index].
            ckvm_atomic_or_u64(words[index] + Int(page / 64), 1 << (page % 64))
        }
    }

    /// Region `index`'s bitmap words, cleared as they are read.
    func take(region index: Int) -> [UInt64] {
        // SAFETY: words[index] holds wordCounts[index] words.
        (0..<wordCounts[index]).map { ckvm_atomic_take_u64(words[index] + $0) }
    }
}

extension GuestMemory {
    /// Whether writes are tracked (`trackingDirtyPages` at creation).
    public var tracksDirtyPages: Bool { dirtyPages != nil }

    /// The pages of region `index` the VMM wrote since the last call (one
    /// bit per 4 KiB page, 64-bit words), cleared; nil without tracking.
    public func takeWrittenPages(region index: Int) -> [UInt64]? {
        guard let dirtyPages, regions.indices.contains(index) else { return nil }
        return dirtyPages.take(region: index)
    }

    /// Records a write of `length` bytes at `address` (already bounds-checked).
    @usableFromInline
    func markWritten(_ address: GuestAddress, length: UInt64) {
        guard let dirtyPages, let index = span(containing: address, length: length) else { return }
        dirtyPages.mark(region: index, offset: address.rawValue - spans[index].start, length: length)
    }
}
