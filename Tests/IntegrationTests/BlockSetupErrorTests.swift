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
