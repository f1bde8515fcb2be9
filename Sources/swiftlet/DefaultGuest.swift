import Foundation

/// The default Linux guest built by guest/build-image: a small kernel from
/// Debian's linux-source-6.1 and a busybox initramfs, cached under
/// .cache/guest/ in the source tree.
struct DefaultGuest {
    let directory: URL

    var kernel: String { directory.appendingPathComponent("vmlinux").path }
    /// The uncompressed archive when present: where guest kernel code is
    /// emulated, gunzip in the guest costs ~20 s of boot (docs/default-guest.md).
    var initrd: String {
        let plain = directory.appendingPathComponent("initramfs.cpio").path
        return FileManager.default.fileExists(atPath: plain) ? plain : directory.appendingPathComponent("initramfs.cpio.gz").path
    }
    /// The kernel parameters the image was tested with (console, emulator workarounds).
    var commandLine: String {
        let text = (try? String(contentsOf: directory.appendingPathComponent("cmdline"), encoding: .utf8)) ?? "console=ttyS0"
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    struct Failure: Error, CustomStringConvertible { let description: String }

    /// `SWIFTLET_GUEST_DIR` if set, else the image guest/build-image makes
    /// (building it first, with progress on stderr, when the cache lacks it).
    static func locate() throws -> DefaultGuest {
        if let override = ProcessInfo.processInfo.environment["SWIFTLET_GUEST_DIR"] {
            return DefaultGuest(directory: URL(fileURLWithPath: override))
        }
        guard let script = findBuildScript() else {
            throw Failure(description: "the default guest's build script (guest/build-image) was not found above \(executableDirectory.path); pass --kernel, or set SWIFTLET_GUEST_DIR to a folder with vmlinux, initramfs.cpio.gz and cmdline")
        }
        let process = Process()
        process.executableURL = script
        process.arguments = ["--print-path"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.standardError
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let path = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard process.terminationStatus == 0, !path.isEmpty else {
            throw Failure(description: "building the default guest failed (\(script.path) exited with status \(process.terminationStatus))")
        }
        return DefaultGuest(directory: URL(fileURLWithPath: path))
    }

    static var executableDirectory: URL {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: me).deletingLastPathComponent()
    }

    /// Walks up from the binary (…/.build/<triple>/debug/swiftlet) to the source tree.
    static func findBuildScript() -> URL? {
        var directory = executableDirectory
        for _ in 0..<6 {
            let candidate = directory.appendingPathComponent("guest/build-image")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return nil
    }
}
