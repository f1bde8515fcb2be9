import Foundation
import SwiftletClient
@testable import SwiftletDaemon
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Snapshots end to end: swiftletd with the real swiftlet-vmm, jailed as by
/// default, on kit guests: `idle` (numbered tick lines, so a restored guest
/// is seen to go on rather than reboot) and `virtio-blk` (numbered block
/// writes, so the restored device and the clone's own disk are exercised).
@Suite("swiftletd snapshots with the real VMM, jailed", .serialized,
       .enabled(if: TestEnvironment.guestsRun && (geteuid() == 0 || TestEnvironment.isCI), "needs root and /dev/kvm; set CI=true to make this a failure"))
struct DaemonSnapshotE2ETests {
    /// The tick numbers in a console log, in order.
    static func ticks(_ text: String) -> [Int] {
        // Split on any line end: "\r\n" is one Character, never equal to "\n".
        text.split(whereSeparator: \.isNewline).compactMap { line in
            guard let range = line.range(of: "KIT idle tick ") else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
    }

    static func inode(_ path: String) -> ino_t? {
        var status = stat()
        return stat(path, &status) == 0 ? status.st_ino : nil
    }

    static func console(_ daemon: DaemonHarness, _ name: String) throws -> String {
        String(decoding: try daemon.client.consoleLog(name, bytes: 1 << 20), as: UTF8.self)
    }

    /// Waits until `name`'s console shows a tick above `above` printed by
    /// its current VMM (the text after `skipping`, if the log still starts
    /// with it); that text, or a failure naming what was seen.
    static func continues(_ daemon: DaemonHarness, _ name: String, above: Int, skipping old: String = "", seconds: Double = 30) throws -> String {
        let deadline = Date().addingTimeInterval(seconds)
        var fresh = ""
        while Date() < deadline {
            let text = try console(daemon, name)
            fresh = !old.isEmpty && text.hasPrefix(old) ? String(text.dropFirst(old.count)) : text
            if let last = ticks(fresh).last, last > above { return fresh }
            usleep(50_000)
        }
        throw TestEnvironment.Failure(description: "VM '\(name)' printed no tick above \(above) after the restore; its console since:\n\(fresh.suffix(2000))\nswiftletd's log:\n\(daemon.log().suffix(4000))")
    }

    @Test("snapshot a running jailed VM, restore it into itself and as a clone with its own disk; both continue the guest; delete the snapshot",
          .timeLimit(.minutes(3)))
    func snapshotRestoreCloneDelete() throws {
        let daemon = try DaemonHarness(label: "snap-e2e")
        defer { daemon.tearDown() }
        try FileManager.default.createDirectory(atPath: daemon.imagesDirectory, withIntermediateDirectories: true)
        let disk = daemon.imagesDirectory + "/data.img"
        #expect(FileManager.default.createFile(atPath: disk, contents: Data(repeating: 0x5A, count: 1 << 20)))
        var definition = try daemon.definition("web", program: "idle")
        // Slow enough that the console holds the whole run and a tick is easily seen.
        definition.cmdline = "period_ms=200"
        definition.disks = [.init(path: disk)]
        _ = try daemon.client.define(definition)
        _ = try daemon.client.action("web", "start")
        let running = try daemon.wait(for: "web", state: .running)
        try #require(running.state == .running, "not running: \(running.reason ?? "") \(daemon.log())")
        let booted = try Self.continues(daemon, "web", above: 3)
        let tickBefore = Self.ticks(booted).last ?? 0

        // Taken while it runs: it is running again afterwards.
        let snapshot = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1"))
        #expect(FileManager.default.fileExists(atPath: snapshot.path + "/state"))
        #expect(FileManager.default.fileExists(atPath: snapshot.path + "/memory"))
        #expect(snapshot.memoryBytes == 64 << 20 && snapshot.stateBytes > 0, "\(snapshot)")
        #expect(try daemon.client.snapshots(of: "web").map(\.name) == ["s1"])
        #expect(try daemon.client.get("web").state == .running)
        // The tick the guest had reached (at most this) when it was saved.
        let atSnapshot = try Self.console(daemon, "web")
        let savedTick = Self.ticks(atSnapshot).last ?? 0
        // It keeps ticking after the snapshot.
        _ = try Self.continues(daemon, "web", above: savedTick + 3, skipping: atSnapshot)

        _ = try daemon.client.action("web", "destroy")
        #expect(try daemon.wait(for: "web", state: .shutOff).state == .shutOff)
        let beforeRestore = try Self.console(daemon, "web")
        let lastBeforeStop = Self.ticks(beforeRestore).last ?? 0

        // Into the VM itself: a fresh VMM resumes the saved guest, which
        // goes on from the saved tick (no "start" line: not a reboot).
        let restored = try daemon.client.restoreSnapshot(of: "web", "s1")
        #expect(restored.state == .running, "\(restored) \(daemon.log())")
        #expect(restored.reason?.contains("restored from snapshot 's1'") == true, "\(restored.reason ?? "")")
        let afterRestore = try Self.continues(daemon, "web", above: savedTick + 5, skipping: beforeRestore)
        #expect(!afterRestore.contains("KIT idle start"), "the restored guest booted afresh:\n\(afterRestore.prefix(2000))")
        let resumedTicks = Self.ticks(afterRestore)
        #expect(((tickBefore + 1)...(savedTick + 2)).contains(resumedTicks.first ?? -1) && savedTick < lastBeforeStop,
                "the restored guest went on from tick \(resumedTicks.first ?? -1), saved between \(tickBefore) and \(savedTick), stopped at \(lastBeforeStop)")
        #expect(try daemon.client.get("web").state == .running)

        // As a clone: a second VM from the same files, its own disk copy.
        let clone = try daemon.client.restoreSnapshot(of: "web", "s1", as: "web2")
        #expect(clone.state == .running, "\(clone) \(daemon.log())")
        let copy = daemon.imagesDirectory + "/web2-data.img"
        #expect(clone.definition.disks.map(\.path) == [copy])
        #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == Data(repeating: 0x5A, count: 1 << 20))
        let cloneConsole = try Self.continues(daemon, "web2", above: savedTick + 5)
        #expect(!cloneConsole.contains("KIT idle start"), "the clone booted afresh:\n\(cloneConsole.prefix(2000))")
        #expect(((tickBefore + 1)...(savedTick + 2)).contains(Self.ticks(cloneConsole).first ?? -1),
                "the clone went on from tick \(Self.ticks(cloneConsole).first ?? -1), saved between \(tickBefore) and \(savedTick)")
        // The state file names the disk as the jailed VMM saw it, /disk0,
        // and the clone's jail links its own copy there.
        let jails = daemon.stateDirectory + "/jail/swiftlet-vmm"
        #expect(Self.inode(jails + "/web2/root/disk0") == Self.inode(copy))
        #expect(Self.inode(jails + "/web/root/disk0") == Self.inode(disk))
        let config = try UnixHTTPClient(socketPath: daemon.stateDirectory + "/vms/web2/api.sock", timeout: 5).request("GET", "/vm/config")
        #expect(config.status == 200 && config.text.contains(#""path_on_host":"/disk0""#), "\(config.status) \(config.text)")
        // Both run side by side.
        #expect(try daemon.client.get("web").state == .running)
        #expect(try daemon.client.get("web2").state == .running)

        // A daemon that crashed finds the restored VMMs again on its next start.
        let pids = (try daemon.client.get("web").pid, try daemon.client.get("web2").pid)
        daemon.stop(signal: SIGKILL)
        try daemon.start()
        let (web, web2) = (try daemon.client.get("web"), try daemon.client.get("web2"))
        #expect(web.state == .running && web.pid == pids.0 && web2.state == .running && web2.pid == pids.1,
                "\(web.state) \(web.pid ?? -1) \(web2.state) \(web2.pid ?? -1) \(daemon.log().suffix(3000))")
        // A restored VM can be snapshotted in turn.
        let again = try daemon.client.createSnapshot(of: "web2", SnapshotRequest(name: "s2"))
        #expect(again.memoryBytes == 64 << 20)
        #expect(try daemon.client.get("web2").state == .running)
        let cloneBefore = try Self.console(daemon, "web2")
        _ = try Self.continues(daemon, "web2", above: (Self.ticks(cloneBefore).last ?? 0) + 2, skipping: cloneBefore)
        try daemon.client.deleteSnapshot(of: "web2", "s2")

        try daemon.client.deleteSnapshot(of: "web", "s1")
        #expect(try daemon.client.snapshots().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: snapshot.path))
        // The restored VMs do not depend on the deleted files.
        #expect(try daemon.client.action("web", "pause").state == .paused)
        #expect(try daemon.client.action("web", "resume").state == .running)
        _ = try daemon.client.action("web2", "destroy")
        _ = try daemon.client.action("web", "destroy")
        #expect(try daemon.wait(for: "web2", state: .shutOff).state == .shutOff)
        #expect(try daemon.wait(for: "web", state: .shutOff).state == .shutOff)
    }

    /// The indexes of virtio-blk's "seq wrote=I" lines, in order.
    static func completions(_ text: String) -> [Int] {
        text.split(whereSeparator: \.isNewline).compactMap { line in
            guard let range = line.range(of: "KIT virtio-blk seq wrote=") else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
    }

    @Test("a guest snapshotted (--stop) among its block writes finishes them after a restore into itself and in a clone on its own disk copy",
          .timeLimit(.minutes(3)))
    func blockWritesContinue() throws {
        let daemon = try DaemonHarness(label: "snap-e2e-blk")
        defer { daemon.tearDown() }
        try FileManager.default.createDirectory(atPath: daemon.imagesDirectory, withIntermediateDirectories: true)
        let disk = daemon.imagesDirectory + "/data.img"
        #expect(FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20)))
        var definition = try daemon.definition("db", program: "virtio-blk")
        definition.cmdline = "seq_lba=16 seq_count=1500"
        definition.disks = [.init(path: disk)]
        _ = try daemon.client.define(definition)
        _ = try daemon.client.action("db", "start")
        #expect(try daemon.consoleContains("db", "seq wrote=200", seconds: 60), "\((try? Self.console(daemon, "db"))?.suffix(2000) ?? "") \(daemon.log().suffix(3000))")

        _ = try daemon.client.createSnapshot(of: "db", SnapshotRequest(name: "mid", after: .stop))
        #expect(try daemon.wait(for: "db", state: .shutOff).state == .shutOff)
        let before = try Self.console(daemon, "db")
        #expect(!before.contains("seq done"), "the writes ended before the snapshot: raise seq_count")
        let lastBefore = Self.completions(before).last ?? -1

        // The clone copies the disk as the snapshot left it and finishes on the copy.
        let clone = try daemon.client.restoreSnapshot(of: "db", "mid", as: "db2")
        #expect(clone.state == .running, "\(clone) \(daemon.log().suffix(3000))")
        #expect(try daemon.consoleContains("db2", "KIT virtio-blk seq done count=1500 readback=ok", seconds: 90),
                "the clone did not finish: \((try? Self.console(daemon, "db2"))?.suffix(2000) ?? "")")
        let cloneText = try Self.console(daemon, "db2")
        #expect(!cloneText.contains("FAIL"), "\(cloneText.suffix(2000))")
        // Stopped right after the snapshot, the original printed exactly up
        // to where the clone goes on (a line may be split between them).
        #expect(Self.completions(before + cloneText) == Array(0..<1500),
                "the original printed up to \(lastBefore): \(before.suffix(200).debugDescription), then the clone: \(cloneText.prefix(300).debugDescription)")

        // Into the VM itself, on the original disk.
        let restored = try daemon.client.restoreSnapshot(of: "db", "mid")
        #expect(restored.state == .running, "\(restored) \(daemon.log().suffix(3000))")
        let deadline = Date().addingTimeInterval(90)
        var text = ""
        while Date() < deadline {
            text = try Self.console(daemon, "db")
            if text.hasPrefix(before) { text = String(text.dropFirst(before.count)) }
            if text.contains("seq done") || text.contains("FAIL") { break }
            usleep(50_000)
        }
        #expect(text.contains("KIT virtio-blk seq done count=1500 readback=ok") && !text.contains("FAIL"), "\(text.suffix(2000))")
        #expect(Self.completions(before + text) == Array(0..<1500), "the restored guest did not go on where it was saved:\n\(text.prefix(2000))")

        // Both images hold every write.
        for image in [disk, daemon.imagesDirectory + "/db2-data.img"] {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: image))
            for lba in [16, 16 + 1499] {
                let word = bytes[(lba * 512)..<(lba * 512 + 8)].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                #expect(word == UInt64(lba) ^ 0x5e9a_5e9a_5e9a_5e9a, "\(image) sector \(lba)")
            }
        }
        try daemon.client.deleteSnapshot(of: "db", "mid")
    }
}
