import Foundation
import Testing

/// Swiftlet's default seccomp filters on real swiftlet-vmm processes: every
/// thread is filtered, and a forbidden call ends the VMM with SIGSYS.
@Suite("Seccomp filters (swiftlet-vmm processes)", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct SeccompProcessTests {
    /// Runs swiftlet-vmm with the self test (a forbidden getppid right after
    /// the filter is installed) aimed at one thread kind.
    static func runSelfTest(_ kind: String, _ arguments: [String]) throws -> (reason: Process.TerminationReason, status: Int32, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ProcessTests.binary("swiftlet-vmm"))
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFTLET_SECCOMP_SELF_TEST"] = kind
        process.environment = environment
        let errors = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let text = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationReason, process.terminationStatus, String(decoding: text, as: UTF8.self))
    }

    static func disk() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-seccomp-\(getpid()).img").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(count: 1 << 20))
        return path
    }

    @Test("a forbidden call on any kind of thread kills the VMM with SIGSYS", arguments: [
        ("main", "hello"), ("vcpu", "hello"), ("api", "hello"), ("blk", "virtio-blk"), ("virtio-rng", "virtio-rng"),
    ])
    func forbiddenCallKills(kind: String, program: String) throws {
        let image = try Self.disk()
        defer { unlink(image) }
        let socket = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-seccomp-\(getpid()).sock").path
        defer { unlink(socket) }
        var arguments = ["--kernel", try KitGuest.program(program), "--serial", "none"]
        switch kind {
        case "api": arguments += ["--api-sock", socket]
        case "blk": arguments += ["--disk", "path=\(image)"]
        case "virtio-rng": arguments += ["--rng"]
        default: break
        }
        let result = try Self.runSelfTest(kind, arguments)
        #expect(result.reason == .uncaughtSignal && result.status == SIGSYS, "\(kind): \(result.reason) \(result.status) \(result.stderr)")
    }

    @Test("--no-seccomp installs no filters: the same forbidden call is harmless")
    func noSeccomp() throws {
        let result = try Self.runSelfTest("vcpu", ["--kernel", try KitGuest.program("hello"), "--serial", "none", "--no-seccomp"])
        #expect(result.reason == .exit && result.status == 0, "\(result.stderr)")
    }

    @Test("by default every thread of a running VMM is filtered and the guest runs")
    func everyThreadFiltered() throws {
        let image = try Self.disk()
        defer { unlink(image) }
        let vm = try ControlAPIProcessTests.VMMProcess(["--kernel", try KitGuest.program("idle"), "--disk", "path=\(image)", "--rng"], name: "seccomp-default")
        #expect(vm.waitForSerial { $0.contains("KIT idle tick 3") }, "the guest runs under the filters")
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(vm.process.processIdentifier)/task")) ?? []
        #expect(tasks.count >= 3)
        for task in tasks {
            let status = (try? String(contentsOfFile: "/proc/\(vm.process.processIdentifier)/task/\(task)/status", encoding: .utf8)) ?? ""
            let name = status.split(separator: "\n").first ?? ""
            #expect(status.contains("Seccomp:\t2"), "\(name): not filtered")
        }
        #expect(try vm.request("GET", "/").status == 200)
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0, "\(vm.stderrText())")
    }
}
