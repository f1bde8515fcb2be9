import Foundation
import Testing

/// Guest console output that nobody reads (a full pipe) or whose reader has
/// gone (a closed pipe) must neither block a vCPU, keep the VMM from
/// stopping, nor kill it.
@Suite("Console output processes", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct ConsoleFloodTests {
    /// A two-page pipe: the flood fills it at once. (A one-page pipe never
    /// polls writable once a byte is in it, so "full" would be one byte.)
    static let pipeSize: Int32 = 8192
    static let setPipeSize: Int32 = 1031  // F_SETPIPE_SZ

    /// swiftlet-vmm (or swiftlet) whose stdout is a two-page pipe this test
    /// never reads; stderr goes to a file.
    final class UnreadConsole {
        let process = Process()
        /// The pipe's read end (the write end is the child's stdout only).
        let readEnd: FileHandle
        let errorFile: URL

        init(_ program: String, _ arguments: [String]) throws {
            errorFile = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-flood-\(UUID().uuidString).err")
            _ = FileManager.default.createFile(atPath: errorFile.path, contents: nil)
            // A plain blocking pipe, as a shell makes (Foundation's Pipe may differ).
            var ends: [Int32] = [0, 0]
            guard pipe(&ends) == 0 else { throw CocoaError(.fileWriteUnknown) }
            _ = fcntl(ends[1], ConsoleFloodTests.setPipeSize, ConsoleFloodTests.pipeSize)
            readEnd = FileHandle(fileDescriptor: ends[0], closeOnDealloc: true)
            let writeEnd = FileHandle(fileDescriptor: ends[1], closeOnDealloc: true)
            process.executableURL = URL(fileURLWithPath: ProcessTests.binary(program))
            process.arguments = arguments
            process.standardOutput = writeEnd
            process.standardError = try FileHandle(forWritingTo: errorFile)
            process.standardInput = FileHandle.nullDevice
            try process.run()
            try writeEnd.close()
        }

        /// Bytes waiting in the pipe.
        var pending: Int {
            var count: Int32 = 0
            _ = ioctl(readEnd.fileDescriptor, UInt(FIONREAD), &count)
            return Int(count)
        }

        /// Waits (bounded) until the guest has filled the pipe: its second
        /// page is in use, after which the pipe no longer polls writable.
        func waitUntilPipeFull(seconds: Double = 60) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline && process.isRunning {
                if pending > Int(ConsoleFloodTests.pipeSize) / 2 { return true }
                usleep(20_000)
            }
            return false
        }

        /// Waits (bounded) for the exit; on timeout kills the process and returns nil.
        func waitForExit(seconds: Double = 20) -> Int32? {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            guard !process.isRunning else {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                return nil
            }
            return process.terminationStatus
        }

        var errors: String { (try? String(contentsOf: errorFile, encoding: .utf8)) ?? "" }

        deinit {
            if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
            try? FileManager.default.removeItem(at: errorFile)
        }
    }

    @Test("a guest flooding a console nobody reads is stopped by SIGTERM: no vCPU blocks on the full pipe")
    func floodStopsOnSignal() throws {
        let vmm = try UnreadConsole("swiftlet-vmm", ["--kernel", try KitGuest.program("flood")])
        #expect(vmm.waitUntilPipeFull(), "the guest never filled the pipe; stderr: \(vmm.errors)")
        usleep(500_000)  // the guest keeps writing into the full pipe
        vmm.process.terminate()
        #expect(vmm.waitForExit() == 4, "SIGTERM must end the VMM (status 4); stderr: \(vmm.errors)")
    }

    @Test("while the console is full the metrics report its dropped bytes, and the API's Stop still ends the VMM")
    func floodStoppedByAPI() throws {
        let socket = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-flood-\(getpid()).sock").path
        try? FileManager.default.removeItem(atPath: socket)
        defer { try? FileManager.default.removeItem(atPath: socket) }
        let vmm = try UnreadConsole("swiftlet-vmm", ["--kernel", try KitGuest.program("flood"), "--api-sock", socket])
        #expect(UnixHTTP.waitForSocket(socket), "stderr: \(vmm.errors)")
        #expect(vmm.waitUntilPipeFull(), "the guest never filled the pipe; stderr: \(vmm.errors)")
        usleep(500_000)
        // Overflow counting itself is BufferedSerialOutputTests' (1 MiB takes long to fill where exits are slow).
        let metrics = try UnixHTTP.request(socket, "GET", "/metrics")
        #expect(metrics.status == 200 && metrics.body.contains(#""bytes_dropped":"#), "\(metrics.body)")
        #expect(try UnixHTTP.request(socket, "PUT", "/actions", body: #"{"action_type": "Stop"}"#).status == 204)
        #expect(vmm.waitForExit() == 0, "Stop must end the VMM; stderr: \(vmm.errors)")
    }

    @Test("a console whose reader has gone does not kill the VMM with SIGPIPE", arguments: [["swiftlet-vmm"], ["swiftlet", "run"]])
    func closedConsoleIsNotFatal(command: [String]) throws {
        let vmm = try UnreadConsole(command[0], Array(command.dropFirst()) + ["--kernel", try KitGuest.program("hello")])
        try vmm.readEnd.close()
        let status = vmm.waitForExit()
        #expect(vmm.process.terminationReason == .exit, "killed by signal \(vmm.process.terminationStatus); stderr: \(vmm.errors)")
        #expect(status == 0, "stderr: \(vmm.errors)")
    }
}
