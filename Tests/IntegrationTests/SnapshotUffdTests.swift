import Foundation
import Glibc
import Testing
@testable import VMM

/// PUT /snapshot/load with Firecracker's Uffd memory backend on real
/// swiftlet-vmm processes, served by swiftlet-uffd-handler.
@Suite("Snapshot load with the Uffd backend (swiftlet-vmm and swiftlet-uffd-handler processes)", .serialized,
       .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct SnapshotUffdTests {
    typealias VMMProcess = ControlAPIProcessTests.VMMProcess
    typealias API = SnapshotAPIProcessTests

    /// swiftlet-uffd-handler serving `memory` on `socket`.
    final class HandlerProcess {
        let process: Process
        let errors: Pipe
        let socket: String

        /// `firecrackerPort`: scripts/firecracker-uffd-handler.py, the Python
        /// port of Firecracker's example handler, instead of ours.
        init(socket: String, memory: String, firecrackerPort: Bool = false) throws {
            self.socket = socket
            unlink(socket)
            if firecrackerPort {
                let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                    .deletingLastPathComponent().appendingPathComponent("scripts/firecracker-uffd-handler.py").path
                process = Process()
                process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                process.arguments = ["python3", script, socket, memory]
                errors = Pipe()
                process.standardError = errors
                process.standardOutput = FileHandle.nullDevice
                process.standardInput = FileHandle.nullDevice
                try process.run()
            } else {
                (process, _, errors) = try ProcessTests.start("swiftlet-uffd-handler", [socket, memory])
            }
            var waited = 0
            while !FileManager.default.fileExists(atPath: socket) && process.isRunning && waited < 500 {
                usleep(10_000)
                waited += 1
            }
        }

        /// Waits (bounded) for the handler to exit; returns its status and stderr.
        func waitForExit(seconds: Double = 20) -> (Int32?, String) {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning {
                process.terminate()
                process.waitUntilExit()
                return (nil, String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
            }
            return (process.terminationStatus, String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        }

        deinit {
            if process.isRunning { process.terminate(); process.waitUntilExit() }
            unlink(socket)
        }
    }

    static func loadUffd(_ vm: VMMProcess, state: String, socket: String, resume: Bool = true) throws -> UnixHTTP.Response {
        try vm.request("PUT", "/snapshot/load",
                       #"{"snapshot_path": "\#(state)", "mem_backend": {"backend_type": "Uffd", "backend_path": "\#(socket)"}, "resume_vm": \#(resume)}"#)
    }

    /// The pages-copied count from the handler's last line.
    static func pagesCopied(_ stderr: String) -> Int? {
        guard let range = stderr.range(of: "the VMM hung up: ") else { return nil }
        return Int(stderr[range.upperBound...].prefix { $0.isNumber })
    }

    @Test("a guest paused mid-computation and restored with the Uffd backend through swiftlet-uffd-handler (or the Python port of Firecracker's example handler) finishes with the uninterrupted result",
          arguments: [(1, false), (2, false), (1, true)])
    func resumeThroughHandler(cpus: Int, firecrackerPort: Bool) throws {
        let args = "rounds=\(SnapshotKVMTests.rounds)"
        let started = Date.now
        let reference = try VMMProcess([], name: "uffd-ref")
        try API.boot(reference, program: "resume", args: args, cpus: cpus)
        #expect(reference.waitForSerial(seconds: 120) { API.resultLine($0) != nil }, "serial: \(reference.serial)")
        let expected = try #require(API.resultLine(reference.serial))
        let referenceSeconds = Date.now.timeIntervalSince(started)

        let tag = "\(cpus)\(firecrackerPort ? "-fc" : "")"
        let statePath = API.path("uffd-state-\(tag)"), memoryPath = API.path("uffd-memory-\(tag)"), socket = API.path("uffd-\(tag).sock")
        defer { for file in [statePath, memoryPath, socket] { unlink(file) } }
        let original = try VMMProcess([], name: "uffd-orig")
        try API.boot(original, program: "resume", args: args, cpus: cpus)
        #expect(original.waitForSerial { $0.contains("KIT resume started") }, "serial: \(original.serial)")
        usleep(UInt32(min(referenceSeconds / 3, 1) * 1_000_000))
        #expect(try original.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        let created = try original.request("PUT", "/snapshot/create", #"{"snapshot_path": "\#(statePath)", "mem_file_path": "\#(memoryPath)"}"#)
        #expect(created.status == 204, "\(created.body)")
        #expect(API.resultLine(original.serial) == nil, "the computation ended before the pause: raise `rounds`")
        original.process.terminate()
        original.process.waitUntilExit()

        let handler = try HandlerProcess(socket: socket, memory: memoryPath, firecrackerPort: firecrackerPort)
        #expect(FileManager.default.fileExists(atPath: socket), "the handler never listened: \(handler.waitForExit(seconds: 1).1)")
        let clone = try VMMProcess([], name: "uffd-clone")
        let loadStart = Date.now
        let loaded = try Self.loadUffd(clone, state: statePath, socket: socket)
        let loadSeconds = Date.now.timeIntervalSince(loadStart)
        #expect(loaded.status == 204, "\(loaded.body)")
        #expect(API.state(clone) == "Running")
        print("snapshot (\(cpus) vCPUs, Uffd): load request \(Int(loadSeconds * 1000)) ms")
        #expect(clone.waitForSerial(seconds: max(60, referenceSeconds * 10)) { API.resultLine($0) != nil }, "serial: \(clone.serial)")
        #expect(API.resultLine(clone.serial) == expected, "serial: \(clone.serial)")
        #expect(!clone.serial.contains("KIT resume started"), "the restored guest started over: \(clone.serial)")
        #expect(clone.waitForExit(seconds: 30) == 0, "stderr: \(clone.stderrText())")

        // The VMM is gone: the handler sees the hang-up and ends, having served the guest's pages.
        let (status, stderr) = handler.waitForExit()
        #expect(status == 0, "handler stderr: \(stderr)")
        if firecrackerPort {
            #expect(stderr.contains("pages copied") && !stderr.contains("Traceback"), "handler stderr: \(stderr)")
            return
        }
        let copied = Self.pagesCopied(stderr) ?? 0
        #expect(copied >= 256, "the guest's 1 MiB table and more came through the handler: \(stderr)")
        print("snapshot (\(cpus) vCPUs, Uffd): handler: \(stderr.split(separator: "\n").last ?? "")")
    }

    @Test("a VM loaded with the Uffd backend can be saved again: its Full snapshot (every page read through the handler) and a Diff of it resume with File to the uninterrupted result")
    func snapshotOfUffdLoadedVM() throws {
        let args = "rounds=\(SnapshotKVMTests.rounds)"
        let started = Date.now
        let reference = try VMMProcess([], name: "uffd-again-ref")
        try API.boot(reference, program: "resume", args: args)
        #expect(reference.waitForSerial(seconds: 120) { API.resultLine($0) != nil }, "serial: \(reference.serial)")
        let expected = try #require(API.resultLine(reference.serial))
        let referenceSeconds = Date.now.timeIntervalSince(started)

        let files = ["state", "memory", "state2", "memory2", "diff-state", "diff"].map { API.path("uffd-again-\($0)") }
        let socket = API.path("uffd-again.sock")
        defer { for file in files + [socket] { unlink(file) } }
        let original = try VMMProcess([], name: "uffd-again-orig")
        try API.boot(original, program: "resume", args: args)
        #expect(original.waitForSerial { $0.contains("KIT resume started") }, "serial: \(original.serial)")
        usleep(UInt32(min(referenceSeconds / 6, 0.5) * 1_000_000))
        #expect(try original.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        #expect(try original.request("PUT", "/snapshot/create", #"{"snapshot_path": "\#(files[0])", "mem_file_path": "\#(files[1])"}"#).status == 204)
        original.process.terminate()
        original.process.waitUntilExit()

        let handler = try HandlerProcess(socket: socket, memory: files[1])
        let loaded = try VMMProcess([], name: "uffd-again-loaded")
        let load = try loaded.request("PUT", "/snapshot/load",
                                      #"{"snapshot_path": "\#(files[0])", "mem_backend": {"backend_type": "Uffd", "backend_path": "\#(socket)"}, "track_dirty_pages": true, "resume_vm": true}"#)
        #expect(load.status == 204, "\(load.body)")
        usleep(UInt32(min(referenceSeconds / 6, 0.5) * 1_000_000))
        #expect(try loaded.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        let full = try loaded.request("PUT", "/snapshot/create", #"{"snapshot_path": "\#(files[2])", "mem_file_path": "\#(files[3])"}"#)
        #expect(full.status == 204, "\(full.body)")
        #expect(try loaded.request("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
        usleep(UInt32(min(referenceSeconds / 6, 0.5) * 1_000_000))
        #expect(try loaded.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        let diff = try loaded.request("PUT", "/snapshot/create", #"{"snapshot_type": "Diff", "snapshot_path": "\#(files[4])", "mem_file_path": "\#(files[5])"}"#)
        #expect(diff.status == 204, "\(diff.body)")
        #expect(API.resultLine(loaded.serial) == nil, "the computation ended before the second pause: raise `rounds`")
        loaded.process.terminate()
        loaded.process.waitUntilExit()
        let (status, stderr) = handler.waitForExit()
        #expect(status == 0 && (Self.pagesCopied(stderr) ?? 0) >= 16384, "the Full snapshot read all 64 MiB through the handler: \(stderr)")

        // The Full snapshot alone, and the Diff rebased onto it, resume with File.
        for (state, memory) in [(files[2], files[3]), (files[4], files[3])] {
            if state == files[4] { try API.rebase(files[5], onto: files[3]) }
            let clone = try VMMProcess([], name: "uffd-again-clone")
            let response = try API.load(clone, state: state, memory: memory)
            #expect(response.status == 204, "\(response.body)")
            #expect(clone.waitForSerial(seconds: max(60, referenceSeconds * 10)) { API.resultLine($0) != nil }, "serial: \(clone.serial)")
            #expect(API.resultLine(clone.serial) == expected, "serial: \(clone.serial)")
            #expect(!clone.serial.contains("KIT resume started"))
            #expect(clone.waitForExit(seconds: 30) == 0, "stderr: \(clone.stderrText())")
        }
    }

    @Test("a guest paused among its virtio-blk writes, saved to files and loaded with the Uffd backend, finishes them: device workers and the device restore fault pages in through the handler too",
          arguments: VirtioTransportKind.allCases)
    func deviceGuestThroughHandler(transport: VirtioTransportKind) throws {
        typealias Device = SnapshotDeviceTests
        let image = try BlockTestImage(megabytes: 1, name: "uffd-snap")
        let configuration = try Device.configuration(image: image, transport: transport)
        let statePath = API.path("uffd-dev-state-\(transport)"), memoryPath = API.path("uffd-dev-memory-\(transport)")
        let socket = API.path("uffd-dev-\(transport).sock")
        defer { for file in [statePath, memoryPath, socket] { unlink(file) } }

        let originalOutput = CapturingSerialOutput()
        // What the guest had printed when it was saved (stopping the paused
        // original afterwards must not count what it might print meanwhile).
        var printedBeforeSnapshot = ""
        do {
            let original = try SnapshotKVMTests.Running(VirtualMachine(configuration: configuration, serialOutput: originalOutput))
            #expect(SnapshotKVMTests.waitFor("seq wrote=\(Device.pauseAfter)", in: originalOutput, seconds: 60), "output: \(originalOutput.text)")
            #expect(original.machine.pause())
            try original.machine.createSnapshot(statePath: statePath, memoryPath: memoryPath)
            printedBeforeSnapshot = originalOutput.text
            #expect(!originalOutput.text.contains("seq done"), "the writes ended before the pause: raise `writes`")
            #expect(try original.finish(within: 0) == .stoppedByUser)
        }

        let handler = try HandlerProcess(socket: socket, memory: memoryPath)
        let saved = try SavedMachine.read(from: statePath)
        let restoredOutput = CapturingSerialOutput()
        let reason: VMExitReason
        do {
            let machine = try VirtualMachine(loading: saved, memoryPath: socket, serialOutput: restoredOutput, memoryBackend: .uffd)
            let restored = try SnapshotKVMTests.Running(machine)
            reason = try restored.finish(within: 120)
        }
        let text = restoredOutput.text
        #expect(reason == .poweredOff, "output: \(text)")
        #expect(text.contains("KIT virtio-blk seq done count=\(Device.writes) readback=ok") && text.contains("KIT virtio-blk PASS"), "output: \(text)")
        #expect(!text.contains("NEEDS_RESET") && !text.contains("FAIL"), "output: \(text)")
        let completions = Device.completions(printedBeforeSnapshot + text)
        let divergence = zip(completions, 0...).first { $0 != $1 }
        #expect(completions.count == Device.writes && divergence == nil,
                "\(completions.count) completions; first out of order: \(divergence.map { "\($0.0) where \($0.1) was due" } ?? "none"); around the pause: \(printedBeforeSnapshot.suffix(120)) / after it: \(originalOutput.text.dropFirst(printedBeforeSnapshot.count).prefix(120)) | \(text.prefix(120))")
        // The VM is gone: the handler ends.
        let (status, stderr) = handler.waitForExit()
        #expect(status == 0 && (Self.pagesCopied(stderr) ?? 0) > 0, "handler stderr: \(stderr)")
    }

    @Test("a missing socket, or one nobody listens on, is a 400 naming the socket and the cause; the same VMM then loads with File and the guest runs on")
    func refusalsThenFile() throws {
        let statePath = API.path("uffd-r-state"), memoryPath = API.path("uffd-r-memory")
        let missing = API.path("uffd-absent.sock"), stale = API.path("uffd-stale.sock")
        defer { for file in [statePath, memoryPath, missing, stale] { unlink(file) } }
        let source = try VMMProcess([], name: "uffd-src")
        try API.boot(source, program: "idle", args: "period_ms=20")
        #expect(source.waitForSerial { $0.contains("KIT idle tick 2") }, "serial: \(source.serial)")
        #expect(try source.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        let created = try source.request("PUT", "/snapshot/create", #"{"snapshot_path": "\#(statePath)", "mem_file_path": "\#(memoryPath)"}"#)
        #expect(created.status == 204, "\(created.body)")
        source.process.terminate()
        source.process.waitUntilExit()

        let vm = try VMMProcess([], name: "uffd-target")
        let absent = try Self.loadUffd(vm, state: statePath, socket: missing)
        let absentFault = ControlAPIProcessTests.json(absent.body)["fault_message"] as? String ?? ""
        #expect(absent.status == 400, "\(absent.body)")
        #expect(absentFault == "Load snapshot error: Failed to restore from snapshot: handing guest memory to the Uffd page-fault handler: page-fault handler at \(missing): connecting to its socket: connect \(missing) failed: No such file or directory (errno 2)",
                "\(absentFault)")
        #expect(API.state(vm) == "Not started")

        // A socket file whose handler is gone: connection refused.
        unlink(stale)
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        // SAFETY: the test path is far shorter than sun_path's 108 bytes.
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(stale.utf8)) }
        // SAFETY: address is a sockaddr_un passed with its own size.
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(bound == 0)
        close(listener)
        let refused = try Self.loadUffd(vm, state: statePath, socket: stale)
        let refusedFault = ControlAPIProcessTests.json(refused.body)["fault_message"] as? String ?? ""
        #expect(refused.status == 400 && refusedFault.hasPrefix("Load snapshot error: ") && refusedFault.contains(stale)
                && refusedFault.contains("Connection refused") && !refusedFault.contains("\n"), "\(refusedFault)")
        #expect(API.state(vm) == "Not started")

        // Nothing was left half-restored: the same VMM loads the files.
        let loaded = try API.load(vm, state: statePath, memory: memoryPath, resume: true)
        #expect(loaded.status == 204, "\(loaded.body)")
        let ticks = vm.ticks()
        #expect(vm.waitForSerial { _ in vm.ticks() >= ticks + 3 }, "the restored guest runs on: \(vm.serial.suffix(300))")
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0, "stderr: \(vm.stderrText())")
    }
}
