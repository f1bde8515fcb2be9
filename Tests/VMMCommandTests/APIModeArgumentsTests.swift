import ControlAPI
import Foundation
import Testing
@testable import VMM
@testable import VMMCommand

@Suite("swiftlet-vmm Firecracker-style options")
struct APIModeArgumentsTests {
    func mode(_ arguments: [String]) throws -> VMMArguments.APIMode {
        guard case let .serve(mode) = try VMMArguments.parse(arguments) else {
            throw VMMError.invalidConfiguration(field: "test", value: "", expected: "an API mode")
        }
        return mode
    }

    @Test("--api-sock alone waits for configuration; --cpus and --memory preset machine-config")
    func waitMode() throws {
        let result = try mode(["--api-sock", "/tmp/s.sock", "--id", "vm-1", "--log-path", "/tmp/l", "--cpus", "2", "--memory", "256M", "--serial", "none"])
        #expect(result.socketPath == "/tmp/s.sock" && result.instanceID == "vm-1" && result.logPath == "/tmp/l")
        #expect(!result.bootsAtOnce && result.configuration.bootSource == nil)
        #expect(result.configuration.machine == MachineConfiguration(vcpuCount: 2, memorySizeMiB: 256))
        #expect(result.configuration.base.serial == .none)
        #expect(try mode(["--api-sock", "s"]).instanceID == VMMArguments.defaultInstanceID)
    }

    @Test("--kernel with --api-sock boots at once with the same configuration as without")
    func bootMode() throws {
        let result = try mode(["--api-sock", "s", "--kernel", "k", "--cmdline", "quiet", "--cpus", "3"])
        #expect(result.bootsAtOnce)
        #expect(result.configuration.bootSource == BootSource(kernelImagePath: "k", bootArgs: "quiet"))
        #expect(result.configuration.machine.vcpuCount == 3)
        guard case .run = try VMMArguments.parse(["--kernel", "k"]) else {
            Issue.record("without API options the classic run action stays")
            return
        }
    }

    @Test("--config-file reads Firecracker's layout and boots at once")
    func configFile() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-fc-args-\(getpid()).json")
        try Data(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}}"#.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try mode(["--config-file", file.path, "--serial", "none"])
        #expect(result.bootsAtOnce && result.socketPath == VMMArguments.defaultSocketPath, "Firecracker serves its default socket")
        #expect(try mode(["--config-file", file.path, "--no-api"]).socketPath == nil)
        #expect(result.configuration.bootSource?.kernelImagePath == "/k" && result.configuration.machine.memorySizeMiB == 64)
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--config-file", file.path, "--kernel", "k"]) }
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--config-file", file.path, "--cpus", "2"]) }
    }

    @Test("bad combinations and ids are refused, naming the option", arguments: [
        (["--api-sock", "s", "--id", "bad/id"], "invalid id 'bad/id'"),
        (["--api-sock", "s", "--id", ""], "invalid id ''"),
        (["--api-sock", "s", "--initrd", "i"], "--initrd"),
        (["--id", "x", "--no-api"], "--no-api"),
        (["--api-sock", "s", "--no-api", "--config-file", "f"], "--no-api"),
        (["--api-sock", "s", "--memory", "1M"], "invalid memory '1M'"),
        (["--config-file", "/no/such/file.json"], "config file '/no/such/file.json' does not exist"),
    ])
    func refused(arguments: [String], message: String) {
        do {
            _ = try VMMArguments.parse(arguments)
            Issue.record("accepted \(arguments)")
        } catch {
            #expect("\(error)".contains(message), "\(error)")
        }
    }

    @Test("Firecracker's invocation: no kernel serves the default socket; its process flags are taken")
    func firecrackerFlags() throws {
        let bare = try mode([])
        #expect(bare.socketPath == VMMArguments.defaultSocketPath && !bare.bootsAtOnce)
        let result = try mode(["--api-sock", "/tmp/x.sock", "--level", "Debug", "--show-level", "--show-log-origin", "--module", "ControlAPI",
                               "--metrics-path", "/tmp/m", "--boot-timer", "--no-seccomp", "--http-api-max-payload-size", "100000",
                               "--start-time-us", "12", "--start-time-cpu-us", "3", "--parent-cpu-time-us", "4"])
        #expect(result.logSettings == APILog.Settings(level: .debug, showLevel: true, showOrigin: true, module: "ControlAPI"))
        #expect(result.metricsPath == "/tmp/m" && result.bootTimer && result.seccompFilterPath == nil)
        #expect(result.maximumPayloadSize == 100000)
        #expect(result.startTimeMicroseconds == 12 && result.startTimeCPUMicroseconds == 3 && result.parentCPUTimeMicroseconds == 4)
        #expect(try mode(["--seccomp-filter", "/f.bpf"]).seccompFilterPath == "/f.bpf")
        // --kernel runs stay Swiftlet's, with no socket unless asked; a process flag routes them through the API runner.
        guard case .run = try VMMArguments.parse(["--kernel", "k"]) else {
            Issue.record("--kernel alone must not serve an API")
            return
        }
        let logged = try mode(["--kernel", "k", "--log-path", "/tmp/l"])
        #expect(logged.socketPath == nil && logged.bootsAtOnce)
    }

    @Test("--version's first line is Firecracker's layout with a semver Kata accepts (>= 0.21.1)")
    func version() throws {
        #expect(try VMMArguments.parse(["--version"]) == .version)
        let fields = VMMArguments.version.split(separator: " ")
        #expect(fields.count == 2 && fields[1].hasPrefix("v"))
        let numbers = fields[1].dropFirst().split(separator: ".").compactMap { Int($0) }
        #expect(numbers.count == 3)
        #expect(numbers.lexicographicallyPrecedes([0, 21, 1]) == false, "\(numbers)")
    }
}
