import Glibc
import HostSystem
import Testing

@Suite("OFD file locks")
struct FileLockTests {
    /// A fresh empty file, removed afterwards.
    static func withTemporaryFile(_ body: (String) throws -> Void) throws {
        var template = Array("/tmp/swiftlet-lock-XXXXXX".utf8CString)
        let descriptor = mkstemp(&template)
        try #require(descriptor >= 0)
        close(descriptor)
        let path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { unlink(path) }
        try body(path)
    }

    @Test("Two opens in one process conflict (OFD, not POSIX, locks): exclusive excludes both kinds, shared ones coexist")
    func conflictsBetweenOpenFileDescriptions() throws {
        try Self.withTemporaryFile { path in
            let first = try OwnedFileDescriptor.open(path, flags: O_RDWR)
            let second = try OwnedFileDescriptor.open(path, flags: O_RDWR)
            #expect(try first.tryLockWholeFile(.exclusive))
            // POSIX locks would let this process take it again through any descriptor.
            #expect(try !second.tryLockWholeFile(.exclusive))
            #expect(try !second.tryLockWholeFile(.shared))
            // Re-locking through the holder's own description converts, never conflicts.
            #expect(try first.tryLockWholeFile(.shared))
            #expect(try second.tryLockWholeFile(.shared))
            let third = try OwnedFileDescriptor.open(path, flags: O_RDWR)
            #expect(try third.tryLockWholeFile(.shared))
            #expect(try !third.tryLockWholeFile(.exclusive))
        }
    }

    @Test("Closing the holding descriptor releases the lock; closing another descriptor of the file does not")
    func releasedWithItsDescription() throws {
        try Self.withTemporaryFile { path in
            var holder: OwnedFileDescriptor? = try OwnedFileDescriptor.open(path, flags: O_RDWR)
            #expect(try holder?.tryLockWholeFile(.exclusive) == true)
            // A POSIX lock would be dropped by this close (any descriptor of the file, same process).
            do { _ = try OwnedFileDescriptor.open(path, flags: O_RDONLY) }
            let other = try OwnedFileDescriptor.open(path, flags: O_RDWR)
            #expect(try !other.tryLockWholeFile(.exclusive))
            holder = nil
            #expect(try other.tryLockWholeFile(.exclusive))
        }
    }
}
