import Foundation
import Glibc
import Testing

/// PATCH /drives/{id} with a new `path_on_host` on the default Linux guest:
/// the firecracker-containerd / Kata hot-plug pattern (a 0-byte placeholder
/// at boot, the real image swapped in later). One boot.
@Suite("Drive swap on the default Linux guest", .serialized,
       .enabled(if: KitGuest.shouldRun && (LinuxGuest.isBuilt || KitGuest.isCI), LinuxGuest.skipReason))
struct DriveSwapLinuxTests {
    /// The serial Firecracker derives from a file: st_dev, st_rdev and st_ino in decimal, cut to 20 bytes.
    static func firecrackerSerial(_ path: String) -> String {
        var status = stat()
        guard stat(path, &status) == 0 else { return "(stat failed)" }
        return String("\(status.st_dev)\(status.st_rdev)\(status.st_ino)".prefix(20))
    }

    @Test("A placeholder drive swapped after boot: the guest sees the new size and serial and reads the new image; a bad path is refused",
          .timeLimit(.minutes(8)))
    func swapAfterBoot() throws {
        let directory = FileManager.default.temporaryDirectory
        let placeholder = directory.appendingPathComponent("swiftlet-swap-\(getpid())-placeholder.img")
        let real = directory.appendingPathComponent("swiftlet-swap-\(getpid())-real.img")
        let marker = "SWIFTLET-SWAPPED-IMAGE-1"
        _ = FileManager.default.createFile(atPath: placeholder.path, contents: nil)
        var image = Data(marker.utf8)
        image.append(Data(count: (1 << 20) - image.count))
        try image.write(to: real)
        defer {
            try? FileManager.default.removeItem(at: placeholder)
            try? FileManager.default.removeItem(at: real)
        }
        // The guest waits (bounded) for /dev/vda to grow, then reports what it sees.
        let script = """
            echo "SIZE0=$(cat /sys/block/vda/size)"
            echo SWAP-READY
            n=0
            while [ "$(cat /sys/block/vda/size)" = 0 ] && [ $n -lt 300 ]; do n=$((n+1)); sleep 1; done
            echo "SIZE1=$(cat /sys/block/vda/size)"
            echo "SERIAL=$(cat /sys/block/vda/serial)"
            echo "DATA=$(head -c \(marker.count) /dev/vda)"
            """
        let guest = try LinuxGuest.directory()
        let commandLine = try String(contentsOf: guest.appendingPathComponent("cmdline"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines) + " swiftlet.cmd64=" + Data(script.utf8).base64EncodedString()
        // A drive id longer than GET_ID's 20 bytes: Firecracker takes it; it is not the serial.
        let driveID = "scratch_drive_with_a_long_id"
        let file = directory.appendingPathComponent("swiftlet-swap-\(getpid()).json")
        let json = """
            {"boot-source": {"kernel_image_path": "\(guest.appendingPathComponent("vmlinux").path)",
                             "initrd_path": "\(guest.appendingPathComponent("initramfs.cpio").path)", "boot_args": "\(commandLine)"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
             "drives": [{"drive_id": "\(driveID)", "path_on_host": "\(placeholder.path)", "is_root_device": false, "is_read_only": false}]}
            """
        try Data(json.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }

        let vm = try ControlAPIProcessTests.VMMProcess(["--config-file", file.path], name: "swap")
        #expect(vm.waitForSerial(seconds: 300) { $0.contains("SWAP-READY") }, "serial: \(vm.serial.suffix(2000))")
        #expect(vm.serial.contains("SIZE0=0"), "the placeholder is a disk of capacity 0")

        let missing = try vm.request("PATCH", "/drives/\(driveID)", #"{"drive_id": "\#(driveID)", "path_on_host": "/nonexistent/disk.img"}"#)
        #expect(missing.status == 400 && missing.body.contains("does not exist"), "\(missing.body)")
        #expect(missing.body.contains("keeps its current image"))

        let swap = try vm.request("PATCH", "/drives/\(driveID)", """
            {"drive_id": "\(driveID)", "path_on_host": "\(real.path)", "rate_limiter": {"bandwidth": {"size": 10000000, "refill_time": 100}}}
            """)
        #expect(swap.status == 204, "\(swap.body)")
        #expect(vm.waitForSerial(seconds: 300) { $0.contains("DATA=") }, "serial: \(vm.serial.suffix(2000))")
        let serial = vm.serial
        #expect(serial.contains("SIZE1=2048"), "1 MiB = 2048 sectors: \(serial.suffix(1000))")
        #expect(serial.contains("DATA=\(marker)"), "\(serial.suffix(1000))")
        #expect(serial.contains("SERIAL=\(Self.firecrackerSerial(real.path))"), "\(serial.suffix(1000))")

        let config = ControlAPIProcessTests.json(try vm.request("GET", "/vm/config").body)
        let drive = (config["drives"] as? [[String: Any]])?.first
        #expect(drive?["path_on_host"] as? String == real.path)
        #expect(((drive?["rate_limiter"] as? [String: Any])?["bandwidth"] as? [String: Any])?["size"] as? Int == 10_000_000)
        // The script ends and the guest powers off.
        #expect(vm.waitForExit(seconds: 120) == 0, "stderr: \(vm.stderrText())")
    }
}
