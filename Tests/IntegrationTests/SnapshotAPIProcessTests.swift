import Foundation
import Glibc
import Testing

/// Firecracker's snapshot routes on real swiftlet-vmm processes: a guest
/// paused mid-computation is saved with PUT /snapshot/create, its VMM
/// killed, and fresh VMMs load it with PUT /snapshot/load and finish the
/// computation with the uninterrupted run's result.
@Suite("Snapshot API (swiftlet-vmm processes)", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct SnapshotAPIProcessTests {
    typealias VMMProcess = ControlAPIProcessTests.VMMProcess

    static let directory = FileManager.default.temporaryDirectory.path

    static func path(_ name: String) -> String { "\(directory)/swiftlet-snap-\(getpid())-\(name)" }

    static func state(_ vm: VMMProcess) -> String? {
        ControlAPIProcessTests.json((try? vm.request("GET", "/").body) ?? "")["state"] as? String
    }

    /// The result line, once complete (the kit prints PASS after it).
    static func resultLine(_ serial: String) -> String? {
        serial.contains("KIT resume PASS") ? SnapshotKVMTests.resultLine(serial) : nil
    }

    /// Configures a kit program through the API and starts it.
    static func boot(_ vm: VMMProcess, program: String, args: String, cpus: Int = 1, drive: String? = nil, trackDirtyPages: Bool = false) throws {
        let kernel = try KitGuest.program(program)
        #expect(try vm.request("PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)", "boot_args": "\#(args)"}"#).status == 204)
        #expect(try vm.request("PUT", "/machine-config", #"{"vcpu_count": \#(cpus), "mem_size_mib": 64, "track_dirty_pages": \#(trackDirtyPages)}"#).status == 204)
        if let drive {
            let put = try vm.request("PUT", "/drives/scratch",
                                     #"{"drive_id": "scratch", "path_on_host": "\#(drive)", "is_root_device": false, "is_read_only": false}"#)
            #expect(put.status == 204, "\(put.body)")
        }
        let start = try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(start.status == 204, "\(start.body)")
    }

    static func load(_ vm: VMMProcess, state: String, memory: String, resume: Bool = true) throws -> UnixHTTP.Response {
        try vm.request("PUT", "/snapshot/load",
                       #"{"snapshot_path": "\#(state)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memory)"}, "resume_vm": \#(resume)}"#)
    }

    static func fileSize(_ path: String) -> UInt64 {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.uint64Value ?? 0
    }

    @Test("a guest paused mid-computation, saved with PUT /snapshot/create and its VMM killed, finishes with the uninterrupted result in two fresh VMMs loading the same files",
          arguments: [1, 2])
    func createKillLoadTwice(cpus: Int) throws {
        let args = "rounds=\(SnapshotKVMTests.rounds)"
        // The reference: never interrupted.
        let started = Date.now
        let reference = try VMMProcess([], name: "snap-ref")
        try Self.boot(reference, program: "resume", args: args, cpus: cpus)
        #expect(reference.waitForSerial(seconds: 120) { Self.resultLine($0) != nil }, "serial: \(reference.serial)")
        let expected = try #require(Self.resultLine(reference.serial))
        let referenceSeconds = Date.now.timeIntervalSince(started)

        let statePath = Self.path("state-\(cpus)"), memoryPath = Self.path("memory-\(cpus)")
        defer { for file in [statePath, memoryPath] { try? FileManager.default.removeItem(atPath: file) } }
        let original = try VMMProcess([], name: "snap-orig")
        try Self.boot(original, program: "resume", args: args, cpus: cpus)
        #expect(original.waitForSerial { $0.contains("KIT resume started") }, "serial: \(original.serial)")
        usleep(UInt32(min(referenceSeconds / 3, 1) * 1_000_000))
        let body = #"{"snapshot_type": "Full", "snapshot_path": "\#(statePath)", "mem_file_path": "\#(memoryPath)"}"#
        let running = try original.request("PUT", "/snapshot/create", body)
        #expect(running.status == 400 && running.body.contains("save/restore unavailable while running"), "\(running.body)")
        #expect(try original.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        let diff = try original.request("PUT", "/snapshot/create", #"{"snapshot_type": "Diff", "snapshot_path": "\#(statePath)", "mem_file_path": "\#(memoryPath)"}"#)
        #expect(diff.status == 400 && diff.body.contains("a Diff snapshot needs dirty-page tracking"), "\(diff.body)")
        #expect(!FileManager.default.fileExists(atPath: statePath) && !FileManager.default.fileExists(atPath: memoryPath), "a refused create writes nothing")
        let createStart = Date.now
        let created = try original.request("PUT", "/snapshot/create", body)
        let createSeconds = Date.now.timeIntervalSince(createStart)
        #expect(created.status == 204, "\(created.body)")
        #expect(Self.resultLine(original.serial) == nil, "the computation ended before the pause: raise `rounds`")
        original.process.terminate()
        original.process.waitUntilExit()
        print("snapshot (\(cpus) vCPUs): create \(Int(createSeconds * 1000)) ms, state \(Self.fileSize(statePath)) bytes, memory \(Self.fileSize(memoryPath)) bytes")

        // Two clones from the same files at once; the second loads paused and is resumed by PATCH /vm.
        let first = try VMMProcess([], name: "snap-clone1")
        let second = try VMMProcess([], name: "snap-clone2")
        let loadStart = Date.now
        let loaded = try Self.load(first, state: statePath, memory: memoryPath)
        let loadSeconds = Date.now.timeIntervalSince(loadStart)
        #expect(loaded.status == 204, "\(loaded.body)")
        let loadedPaused = try Self.load(second, state: statePath, memory: memoryPath, resume: false)
        #expect(loadedPaused.status == 204, "\(loadedPaused.body)")
        #expect(Self.state(first) == "Running")
        #expect(Self.state(second) == "Paused")
        let config = ControlAPIProcessTests.json(try second.request("GET", "/vm/config").body)
        let machine = config["machine-config"] as? [String: Any]
        #expect(machine?["mem_size_mib"] as? Int == 64 && machine?["vcpu_count"] as? Int == cpus, "\(config)")
        let again = try Self.load(second, state: statePath, memory: memoryPath)
        #expect(again.status == 400 && again.body.contains("not supported after starting the microVM"), "\(again.body)")
        #expect(try second.request("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
        print("snapshot (\(cpus) vCPUs): load request (to resumed) \(Int(loadSeconds * 1000)) ms")

        for clone in [first, second] {
            #expect(clone.waitForSerial(seconds: max(60, referenceSeconds * 10)) { Self.resultLine($0) != nil }, "serial: \(clone.serial)")
            #expect(Self.resultLine(clone.serial) == expected, "serial: \(clone.serial)")
            #expect(!clone.serial.contains("KIT resume started"), "the restored guest started over: \(clone.serial)")
            #expect(clone.waitForExit(seconds: 30) == 0, "stderr: \(clone.stderrText())")
        }
    }

    /// Writes the data extents of `diff` (SEEK_DATA/SEEK_HOLE) over `base`,
    /// as Firecracker's rebase-snap does.
    static func rebase(_ diff: String, onto base: String) throws {
        let source = open(diff, O_RDONLY), target = open(base, O_WRONLY)
        defer { close(source); close(target) }
        #expect(source >= 0 && target >= 0)
        let end = lseek(source, 0, SEEK_END)
        var position: off_t = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while position < end {
            // SEEK_DATA and SEEK_HOLE (Linux), which Glibc's module does not export.
            let data = lseek(source, position, 3)
            if data < 0 { break }
            let hole = lseek(source, data, 4)
            var offset = data
            while offset < hole {
                let wanted = min(buffer.count, Int(hole - offset))
                let count = buffer.withUnsafeMutableBytes { pread(source, $0.baseAddress, wanted, offset) }
                #expect(count > 0)
                guard count > 0 else { return }
                #expect(buffer.withUnsafeBytes { pwrite(target, $0.baseAddress, count, offset) } == count)
                offset += off_t(count)
            }
            position = hole
        }
    }

    @Test("with track_dirty_pages, a Diff snapshot holds only the pages written since the Full one; rebased onto it, it resumes the computation")
    func diffSnapshot() throws {
        let args = "rounds=\(SnapshotKVMTests.rounds)"
        let started = Date.now
        let reference = try VMMProcess([], name: "diff-ref")
        try Self.boot(reference, program: "resume", args: args)
        #expect(reference.waitForSerial(seconds: 120) { Self.resultLine($0) != nil }, "serial: \(reference.serial)")
        let expected = try #require(Self.resultLine(reference.serial))
        let referenceSeconds = Date.now.timeIntervalSince(started)

        let base = Self.path("diff-base"), baseState = Self.path("diff-base-state")
        let diff = Self.path("diff-mem"), diffState = Self.path("diff-state")
        defer { for file in [base, baseState, diff, diffState] { try? FileManager.default.removeItem(atPath: file) } }
        let original = try VMMProcess([], name: "diff-orig")
        try Self.boot(original, program: "resume", args: args, trackDirtyPages: true)
        #expect(original.waitForSerial { $0.contains("KIT resume started") }, "serial: \(original.serial)")
        usleep(UInt32(min(referenceSeconds / 6, 0.5) * 1_000_000))
        #expect(try original.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        let full = try original.request("PUT", "/snapshot/create", #"{"snapshot_type": "Full", "snapshot_path": "\#(baseState)", "mem_file_path": "\#(base)"}"#)
        #expect(full.status == 204, "\(full.body)")
        #expect(try original.request("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
        usleep(UInt32(min(referenceSeconds / 6, 0.5) * 1_000_000))
        #expect(try original.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        let createStart = Date.now
        let made = try original.request("PUT", "/snapshot/create", #"{"snapshot_type": "Diff", "snapshot_path": "\#(diffState)", "mem_file_path": "\#(diff)"}"#)
        let createSeconds = Date.now.timeIntervalSince(createStart)
        #expect(made.status == 204, "\(made.body)")
        #expect(Self.resultLine(original.serial) == nil, "the computation ended before the second pause: raise `rounds`")
        original.process.terminate()
        original.process.waitUntilExit()

        var status = stat()
        #expect(stat(diff, &status) == 0)
        let allocated = UInt64(status.st_blocks) * 512
        print("snapshot: diff create \(Int(createSeconds * 1000)) ms, memory file \(status.st_size) bytes, \(allocated) allocated")
        #expect(status.st_size == 64 << 20)
        #expect(allocated < 16 << 20, "only the pages written since the Full snapshot: \(allocated) bytes allocated")

        try Self.rebase(diff, onto: base)
        let clone = try VMMProcess([], name: "diff-clone")
        let loaded = try Self.load(clone, state: diffState, memory: base)
        #expect(loaded.status == 204, "\(loaded.body)")
        #expect(clone.waitForSerial(seconds: max(60, referenceSeconds * 10)) { Self.resultLine($0) != nil }, "serial: \(clone.serial)")
        #expect(Self.resultLine(clone.serial) == expected, "serial: \(clone.serial)")
        #expect(!clone.serial.contains("KIT resume started"))
        #expect(clone.waitForExit(seconds: 30) == 0, "stderr: \(clone.stderrText())")
    }

    @Test("PUT /snapshot/load refuses bad requests and files with one clear line, and the same VMM then loads a good snapshot")
    func refusals() throws {
        let disk = Self.path("disk"), statePath = Self.path("r-state"), memoryPath = Self.path("r-memory")
        let bad = Self.path("bad"), small = Self.path("small")
        defer { for file in [disk, statePath, memoryPath, bad, small] { try? FileManager.default.removeItem(atPath: file) } }
        #expect(FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20)))

        let source = try VMMProcess([], name: "snap-src")
        let early = try source.request("PUT", "/snapshot/create", #"{"snapshot_path": "\#(statePath)", "mem_file_path": "\#(memoryPath)"}"#)
        #expect(early.status == 400 && early.body.contains("not supported before starting the microVM"), "\(early.body)")
        try Self.boot(source, program: "idle", args: "period_ms=20", drive: disk)
        #expect(source.waitForSerial { $0.contains("KIT idle tick 2") }, "serial: \(source.serial)")
        #expect(try source.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        let created = try source.request("PUT", "/snapshot/create", #"{"snapshot_path": "\#(statePath)", "mem_file_path": "\#(memoryPath)"}"#)
        #expect(created.status == 204, "\(created.body)")
        source.process.terminate()
        source.process.waitUntilExit()

        // Load after a boot-specific resource: Firecracker's refusal.
        let configured = try VMMProcess([], name: "snap-configured")
        #expect(try configured.request("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#).status == 204)
        let afterConfig = try Self.load(configured, state: statePath, memory: memoryPath)
        #expect(afterConfig.status == 400 && afterConfig.body.contains("Loading a microVM snapshot not allowed after configuring boot-specific resources."),
                "\(afterConfig.body)")

        let vm = try VMMProcess([], name: "snap-target")
        // Metrics (like the logger) are not boot-specific: set before a load.
        let metricsPath = Self.path("metrics")
        defer { try? FileManager.default.removeItem(atPath: metricsPath) }
        #expect(FileManager.default.createFile(atPath: metricsPath, contents: nil))
        #expect(try vm.request("PUT", "/metrics", #"{"metrics_path": "\#(metricsPath)"}"#).status == 204)
        let good = try Data(contentsOf: URL(fileURLWithPath: statePath))
        func refused(_ state: String, _ memory: String, _ expected: String, _ what: Comment) throws {
            let response = try Self.load(vm, state: state, memory: memory)
            #expect(response.status == 400, what)
            #expect(response.body.contains(expected), "\(what): \(response.body)")
            #expect(!response.body.contains("\\n"), "one line: \(response.body)")
            #expect(Self.state(vm) == "Not started", what)
        }
        var corrupt = good
        corrupt[corrupt.count / 2] ^= 0xFF
        try corrupt.write(to: URL(fileURLWithPath: bad))
        try refused(bad, memoryPath, "is corrupt: checksum", "corrupt state file")
        try good.prefix(good.count - 100).write(to: URL(fileURLWithPath: bad))
        try refused(bad, memoryPath, "is truncated", "truncated state file")
        var version = good
        version[8] = 99
        try version.write(to: URL(fileURLWithPath: bad))
        try refused(bad, memoryPath, "format version 99 is not supported", "wrong version")
        try refused(Self.path("absent"), memoryPath, Self.path("absent"), "missing state file")
        try refused(statePath, Self.path("absent"), Self.path("absent"), "missing memory file")
        #expect(FileManager.default.createFile(atPath: small, contents: Data(count: 1 << 20)))
        try refused(statePath, small, "smaller than the", "memory file too small")
        let uffd = try vm.request("PUT", "/snapshot/load",
                                  #"{"snapshot_path": "\#(statePath)", "mem_backend": {"backend_type": "Uffd", "backend_path": "\#(Self.path("absent.sock"))"}}"#)
        #expect(uffd.status == 400 && uffd.body.contains("connecting to its socket") && uffd.body.contains(Self.path("absent.sock")), "\(uffd.body)")
        let both = try vm.request("PUT", "/snapshot/load",
                                  #"{"snapshot_path": "\#(statePath)", "mem_file_path": "\#(memoryPath)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memoryPath)"}}"#)
        #expect(both.status == 400 && both.body.contains("exclusively is required"), "\(both.body)")
        #expect(truncate(disk, 2 << 20) == 0)
        try refused(statePath, memoryPath, "disk 'scratch' (\(disk)) is 2097152 bytes now but was 1048576 bytes", "resized disk")
        #expect(truncate(disk, 1 << 20) == 0)

        // After every refusal the same VMM loads the good snapshot.
        let loaded = try Self.load(vm, state: statePath, memory: memoryPath, resume: false)
        #expect(loaded.status == 204, "\(loaded.body)")
        #expect(Self.state(vm) == "Paused")
        #expect(try vm.request("GET", "/metrics").status == 200)
        let drives = ControlAPIProcessTests.json(try vm.request("GET", "/vm/config").body)["drives"] as? [[String: Any]]
        #expect(drives?.count == 1 && drives?.first?["drive_id"] as? String == "scratch" && drives?.first?["path_on_host"] as? String == disk,
                "\(String(describing: drives))")
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#).status == 204)
        let lines = ((try? String(contentsOfFile: metricsPath, encoding: .utf8)) ?? "").split(separator: "\n")
        let latencies = ControlAPIProcessTests.json(String(lines.last ?? ""))["latencies_us"] as? [String: Any]
        #expect((latencies?["load_snapshot"] as? Int ?? 0) > 0, "latencies: \(String(describing: latencies))")
        let ticks = vm.ticks()
        #expect(try vm.request("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
        #expect(vm.waitForSerial { _ in vm.ticks() >= ticks + 3 }, "the restored guest runs on: \(vm.serial.suffix(300))")
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0, "stderr: \(vm.stderrText())")
    }
}
