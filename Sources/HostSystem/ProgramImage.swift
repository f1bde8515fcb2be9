import CKVM
import Glibc

/// The running program's own loaded segments (text, read-only data, data).
public enum ProgramImage {
    public struct Segment: Sendable, Equatable {
        public var start: UInt
        public var length: UInt
        public var writable: Bool
    }

    /// The program's PT_LOAD segments, page aligned.
    public static func segments() -> [Segment] {
        let capacity = 16
        var starts = [UInt](repeating: 0, count: capacity)
        var lengths = [UInt](repeating: 0, count: capacity)
        var writable = [Int32](repeating: 0, count: capacity)
        // SAFETY: the three buffers hold `capacity` entries each, the capacity passed.
        let count = starts.withUnsafeMutableBufferPointer { starts in
            lengths.withUnsafeMutableBufferPointer { lengths in
                writable.withUnsafeMutableBufferPointer { writable in
                    Int(ckvm_program_segments(starts.baseAddress, lengths.baseAddress, writable.baseAddress, Int32(capacity)))
                }
            }
        }
        return (0..<max(0, min(count, capacity))).map { Segment(start: starts[$0], length: lengths[$0], writable: writable[$0] != 0) }
    }

    /// Unmaps the program's read-only segments (code and constants) from
    /// this process without freeing them: they stay in the page cache, and
    /// the next touch of a page maps it again (a minor fault). Called once
    /// the VM runs, it drops the pages only start-up used (argument parsing,
    /// loaders, ACPI and table builders: a static binary faults in most of
    /// its text, 16 pages around each fault), so the resident set is what
    /// the running VM uses. Never for writable segments: MADV_DONTNEED
    /// would discard their private copies. Returns the bytes released.
    @discardableResult
    public static func releaseReadOnlyPages() -> UInt {
        var released: UInt = 0
        for segment in segments() where !segment.writable && segment.length > 0 {
            // SAFETY: the range is one of this program's own page-aligned, mapped, read-only segments.
            guard let address = UnsafeMutableRawPointer(bitPattern: segment.start) else { continue }
            if (try? systemCall("madvise MADV_DONTNEED") { madvise(address, Int(segment.length), MADV_DONTNEED) }) != nil {
                released += segment.length
            }
        }
        return released
    }
}
