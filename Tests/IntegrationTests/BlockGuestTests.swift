import Foundation
import Testing

/// A raw image in the temporary directory, removed on deinit. Sector s
/// starts with "HOST-SECTOR-<s>" (5 digits) and is otherwise zero.
final class BlockTestImage {
    let url: URL
    var path: String { url.path }

    init(megabytes: Int = 8, name: String = "disk") throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-\(name)-\(getpid())-\(UUID().uuidString.prefix(8)).img")
        var bytes = Data(count: megabytes << 20)
        for sector in stride(from: 0, to: (megabytes << 20) / 512, by: 1) {
            let label = Data(String(format: "HOST-SECTOR-%05d", sector).utf8)
            bytes.replaceSubrange((sector * 512)..<(sector * 512 + label.count), with: label)
        }
        try bytes.write(to: url)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    func bytes(at offset: Int, count: Int) throws -> [UInt8] {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        return [UInt8](try handle.read(upToCount: count) ?? Data())
    }

    func contents() throws -> Data { try Data(contentsOf: url) }
}

/// What the guest writes: 4 KiB block b holds "swiftlet block <b>" (5
/// digits, newline) repeated, then spaces to fill 4096 bytes. The guest
/// builds it with shell builtins (each fork costs time when its kernel is
/// emulated).
enum GuestPattern {
    static let lineLength = 21
    static let repeats = 4096 / lineLength
    static let padding = 4096 - repeats * lineLength

    static func block(_ block: Int) -> [UInt8] {
        let line = Array(String(format: "swiftlet block %05d\n", block).utf8)
        return Array([[UInt8]](repeating: line, count: repeats).joined()) + [UInt8](repeating: 0x20, count: padding)
    }

    /// Shell that writes block `b` to /dev/vda at 4 KiB block `b` and fsyncs
    /// it (the guest driver sends a FLUSH, and fsync returns after it completes).
    static func writeBlock(_ block: Int, device: String = "vda") -> String {
        "{ i=0; while [ $i -lt \(repeats) ]; do printf 'swiftlet block %05d\\n' \(block); i=$((i+1)); done; printf '%\(padding)s' ''; } >/tmp/block; "
            + "dd if=/tmp/block of=/dev/\(device) bs=4096 seek=\(block) count=1 conv=fsync 2>/dev/null"
    }
}

/// virtio-blk with the stock Linux driver in the default guest. Each boot
/// takes 15-20 s where guest kernel code is emulated (kvm_pvm).
@Suite("virtio-blk in the default Linux guest", .serialized,
       .enabled(if: KitGuest.shouldRun && (LinuxGuest.isBuilt || KitGuest.isCI), LinuxGuest.skipReason))
struct BlockLinuxGuestTests {
    @Test("The guest reads the host's sectors, sees size and id, and blocks it writes and syncs are in the image", .timeLimit(.minutes(5)))
    func writeAndSync() throws {
        let image = try BlockTestImage()
        let script = [
            "echo ID=$(cat /sys/block/vda/serial) SIZE=$(cat /sys/block/vda/size) RO=$(cat /sys/block/vda/ro)",
            "echo READ=$(dd if=/dev/vda bs=512 skip=1000 count=1 2>/dev/null | head -c 17)",
            GuestPattern.writeBlock(3), GuestPattern.writeBlock(100),
            "sync", "echo WROTE",
        ].joined(separator: "\n")
        let result = try ProcessTests.run("swiftlet", ["run", "--disk", "path=\(image.path),id=test-disk-1", "--", "sh", "-c", script])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("ID=test-disk-1 SIZE=16384 RO=0"), "console: \(result.stdout.suffix(2000))")
        #expect(result.stdout.contains("READ=HOST-SECTOR-01000"))
        #expect(result.stdout.contains("WROTE"))
        #expect(try image.bytes(at: 3 * 4096, count: 4096) == GuestPattern.block(3))
        #expect(try image.bytes(at: 100 * 4096, count: 4096) == GuestPattern.block(100))
        // Untouched sectors keep the host's bytes.
        #expect(try image.bytes(at: 2 * 4096, count: 17) == Array("HOST-SECTOR-00016".utf8))
    }

    /// One boot for three disks (each boot costs 15-60 s here): ids and
    /// order, a read-only disk, discard, and O_DIRECT.
    @Test("Three disks: vda, vdb, vdc with their ids; the read-only one refuses writes; blkdiscard and O_DIRECT writes on the third", .timeLimit(.minutes(5)))
    func threeDisks() throws {
        let first = try BlockTestImage(megabytes: 1, name: "first"), readOnly = try BlockTestImage(megabytes: 2, name: "readonly")
        let third = try BlockTestImage(megabytes: 2, name: "third")
        let readOnlyBefore = try readOnly.contents()
        let script = [
            "echo A=$(cat /sys/block/vda/serial) B=$(cat /sys/block/vdb/serial) C=$(cat /sys/block/vdc/serial) CSIZE=$(cat /sys/block/vdc/size)",
            "echo RO=$(cat /sys/block/vda/ro)$(cat /sys/block/vdb/ro)$(cat /sys/block/vdc/ro)",
            "echo READ=$(dd if=/dev/vdb bs=512 skip=7 count=1 2>/dev/null | head -c 17)",
            "if echo overwrite | dd of=/dev/vdb bs=512 count=1 conv=fsync,sync 2>/dev/null; then echo WRITE-ACCEPTED; else echo WRITE-REFUSED; fi",
            "echo DISCARD=$(cat /sys/block/vdc/queue/discard_max_bytes) ZEROES=$(cat /sys/block/vdc/queue/write_zeroes_max_bytes)",
            "echo RODISCARD=$(cat /sys/block/vdb/queue/discard_max_bytes)",
            "blkdiscard -o 65536 -l 65536 /dev/vdc && echo DISCARDED",
            GuestPattern.writeBlock(100, device: "vdc"),
            "sync",
        ].joined(separator: "\n")
        let result = try ProcessTests.run("swiftlet", [
            "run", "--disk", "path=\(first.path),id=alpha", "--disk", "path=\(readOnly.path),id=beta,readonly=on",
            "--disk", "path=\(third.path),id=gamma,direct=on", "--", "sh", "-c", script,
        ])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("A=alpha B=beta C=gamma CSIZE=4096"), "console: \(result.stdout.suffix(2000))")
        #expect(result.stdout.contains("RO=010"))
        #expect(result.stdout.contains("READ=HOST-SECTOR-00007"))
        #expect(result.stdout.contains("WRITE-REFUSED"))
        #expect(try readOnly.contents() == readOnlyBefore)
        // Linux caps a discard at UINT_MAX sectors' worth of bytes, rounded to 512.
        #expect(result.stdout.contains("DISCARD=2199023255040 ZEROES=2199023255040"))
        #expect(result.stdout.contains("RODISCARD=0"))
        #expect(result.stdout.contains("DISCARDED"))
        let contents = try third.contents()
        #expect(contents.count == 2 << 20)
        #expect(contents[65536..<131072].allSatisfy { $0 == 0 })
        #expect(try third.bytes(at: 131072, count: 17) == Array("HOST-SECTOR-00256".utf8))
        #expect(try first.bytes(at: 65536, count: 17) == Array("HOST-SECTOR-00128".utf8))
        #expect(try third.bytes(at: 100 * 4096, count: 4096) == GuestPattern.block(100))
    }

    /// Issue #4 item 8: the guest writes a block, fsyncs (a FLUSH request),
    /// then prints a marker; the test SIGKILLs the VMM as soon as it sees
    /// the marker. Every block flushed before the kill must be in the image.
    @Test("After SIGKILL right after a flush completes, every flushed block is in the image", .timeLimit(.minutes(5)))
    func durability() throws {
        let image = try BlockTestImage()
        let flushed = try Self.writeFlushAndKill(disk: "path=\(image.path)")
        for round in flushed {
            #expect(try image.bytes(at: round * 10 * 4096, count: 4096) == GuestPattern.block(round * 10), "block of round \(round)")
        }
    }

    /// The same through a qcow2 overlay on the raw image (issue #13): after
    /// the kill, qemu-img finds no corruption (leaked clusters are allowed,
    /// as after any crash) and reads every flushed block through the overlay.
    @Test("After SIGKILL right after a flush, a qcow2 overlay holds every flushed block and passes qemu-img check", .timeLimit(.minutes(5)),
          .enabled(if: QCOW2Oracle.qemuImg != nil || KitGuest.isCI, "needs qemu-img (qemu-utils)"))
    func durabilityQCOW2() throws {
        let qemuImg = try #require(QCOW2Oracle.qemuImg, "qemu-img (Debian's qemu-utils) is missing")
        let base = try BlockTestImage()
        let overlay = base.path + ".qcow2"
        defer { unlink(overlay) }
        #expect(QCOW2Oracle.run(qemuImg, ["create", "-q", "-f", "qcow2", "-b", base.path, "-F", "raw", overlay]).status == 0)
        let flushed = try Self.writeFlushAndKill(disk: "path=\(overlay),format=qcow2")
        let check = QCOW2Oracle.run(qemuImg, ["check", overlay])
        #expect(check.status == 0 || check.status == 3, "no corruption (status 3 is leaked clusters only): \(check.output)")
        let flat = base.path + ".flat"
        defer { unlink(flat) }
        #expect(QCOW2Oracle.run(qemuImg, ["convert", "-f", "qcow2", "-O", "raw", overlay, flat]).status == 0)
        let contents = try Data(contentsOf: URL(fileURLWithPath: flat))
        for round in flushed {
            let offset = round * 10 * 4096
            #expect(Array(contents[offset..<offset + 4096]) == GuestPattern.block(round * 10), "block of round \(round)")
        }
        #expect(try base.bytes(at: 7 * 512, count: 17) == Array("HOST-SECTOR-00007".utf8), "the backing image is untouched")
    }

    /// Boots the default guest on `disk` (a --disk value), lets it write
    /// and fsync six blocks, SIGKILLs the VMM after the fourth flush; the
    /// rounds whose flush completed.
    static func writeFlushAndKill(disk: String) throws -> [Int] {
        let rounds = 6, killAfter = 4
        var script = ""
        for round in 1...rounds {
            script += GuestPattern.writeBlock(round * 10) + "\necho SWIFTLET-FLUSHED-\(round)\n"
        }
        script += "sleep 600\n"
        let guest = try LinuxGuest.directory()
        let commandLine = try String(contentsOf: guest.appendingPathComponent("cmdline"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines) + " swiftlet.cmd64=" + Data(script.utf8).base64EncodedString()
        let (process, output, _) = try ProcessTests.start("swiftlet-vmm", [
            "--kernel", guest.appendingPathComponent("vmlinux").path,
            "--initrd", guest.appendingPathComponent("initramfs.cpio").path,
            "--cmdline", commandLine, "--memory", "256M", "--serial", "stdio",
            "--disk", disk,
        ])
        // Never leave a VMM behind if the guest stalls.
        let watchdog = DispatchWorkItem { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 240, execute: watchdog)
        defer { watchdog.cancel() }
        let marker = "SWIFTLET-FLUSHED-\(killAfter)"
        var console = ""
        while !console.contains(marker) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            console += String(decoding: chunk, as: UTF8.self)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(console.contains(marker), "console: \(console.suffix(2000))")
        #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGKILL)
        let flushed = (1...rounds).filter { console.contains("SWIFTLET-FLUSHED-\($0)") }
        #expect(flushed.count >= killAfter)
        return flushed
    }
}

/// qemu-img, the oracle for qcow2 images in tests.
enum QCOW2Oracle {
    static let qemuImg = ["/usr/bin/qemu-img", "/bin/qemu-img"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// qemu-img's status and its stdout and stderr together.
    static func run(_ tool: String, _ arguments: [String]) -> (status: Int32, output: String) {
        guard let result = try? HostCommand.run(tool, arguments, timeout: 120) else { return (-1, "cannot run \(tool)") }
        return (result.status, result.output + result.errors)
    }
}

extension LinuxGuest {
    /// The built default guest (.cache/guest/current), for tests that run swiftlet-vmm directly.
    static func directory() throws -> URL {
        let directory = KitGuest.packageRoot.appendingPathComponent(".cache/guest/current")
        guard FileManager.default.fileExists(atPath: directory.appendingPathComponent("vmlinux").path) else {
            throw KitGuest.KitError(message: "the default guest is not built (guest/build-image)")
        }
        return directory
    }
}
