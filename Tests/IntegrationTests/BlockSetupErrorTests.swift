import Foundation
import Testing

@Suite("virtio-blk setup errors", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct BlockSetupErrorTests {
    @Test("A bad disk stops swiftlet-vmm with status 1 and one line naming it, before the guest runs", arguments: [
        ("path=/nonexistent/disk.img", "disk image '/nonexistent/disk.img' does not exist"),
        ("path=/tmp", "disk image '/tmp' is a directory: expected a raw image file"),
    ])
    func refused(spec: String, message: String) throws {
        let result = try ProcessTests.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--disk", spec])
        #expect(result.status == 1)
        #expect(result.stderr.contains(message), "stderr: \(result.stderr)")
        #expect(!result.stdout.contains("KIT hello"))
    }

    @Test("An image that is not a multiple of 512 bytes, and one image attached twice, are refused")
    func sizeAndDuplicates() throws {
        let odd = try BlockTestImage(megabytes: 1, name: "odd")
        try Data(count: 1000).write(to: odd.url)
        let oddResult = try ProcessTests.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--disk", "path=\(odd.path)"])
        #expect(oddResult.status == 1)
        #expect(oddResult.stderr.contains("is 1000 bytes: expected a multiple of 512"), "stderr: \(oddResult.stderr)")
        let image = try BlockTestImage(megabytes: 1)
        let twice = try ProcessTests.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--disk", "path=\(image.path)", "--disk", "path=\(image.path)"])
        #expect(twice.status == 1)
        #expect(twice.stderr.contains("is already attached"), "stderr: \(twice.stderr)")
    }
}

@Suite("Disk image locks across VMMs", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct DiskLockProcessTests {
    /// Whether some open file description holds an OFD lock on `path` that a writer would meet.
    static func isLocked(_ path: String) -> Bool {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var query = flock()
        query.l_type = Int16(F_WRLCK)
        query.l_whence = Int16(SEEK_SET)
        // F_OFD_GETLK (36): reports a conflicting lock, or F_UNLCK when there is none.
        guard fcntl(descriptor, 36, &query) == 0 else { return false }
        return query.l_type != Int16(F_UNLCK)
    }

    @Test("A second swiftlet-vmm on an image a running one writes is refused with one line naming it, even read-only; once the first exits, it is free")
    func secondVMMRefused() throws {
        let image = try BlockTestImage(megabytes: 1)
        let (first, _, _) = try ProcessTests.start("swiftlet-vmm", ["--kernel", try KitGuest.program("idle"), "--disk", "path=\(image.path)"])
        defer { if first.isRunning { first.terminate(); first.waitUntilExit() } }
        // The first VMM locks the image before its guest starts; wait (bounded) until it has.
        var polls = 0
        while !Self.isLocked(image.path) && first.isRunning && polls < 600 {
            usleep(50_000)
            polls += 1
        }
        try #require(Self.isLocked(image.path), "the first VMM never locked \(image.path)")

        let writer = try ProcessTests.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--disk", "path=\(image.path)"])
        #expect(writer.status == 1)
        #expect(writer.stderr.contains("disk image '\(image.path)' is locked: another process holds it open"), "stderr: \(writer.stderr)")
        #expect(!writer.stdout.contains("KIT hello"))
        let reader = try ProcessTests.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--disk", "path=\(image.path),readonly=on"])
        #expect(reader.status == 1)
        #expect(reader.stderr.contains("disk image '\(image.path)' is locked: another process holds it open writable"), "stderr: \(reader.stderr)")

        first.terminate()
        first.waitUntilExit()
        let after = try ProcessTests.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--disk", "path=\(image.path)"])
        #expect(after.status == 0, "stderr: \(after.stderr)")
        #expect(after.stdout.contains("KIT hello PASS"))
    }
}
