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
        #expect(result.bootsAtOnce && result.socketPath == nil)
        #expect(result.configuration.bootSource?.kernelImagePath == "/k" && result.configuration.machine.memorySizeMiB == 64)
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--config-file", file.path, "--kernel", "k"]) }
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--config-file", file.path, "--cpus", "2"]) }
    }

    @Test("bad combinations and ids are refused, naming the option", arguments: [
        (["--api-sock", "s", "--id", "bad/id"], "invalid id 'bad/id'"),
        (["--api-sock", "s", "--id", ""], "invalid id ''"),
        (["--api-sock", "s", "--initrd", "i"], "--initrd"),
        (["--id", "x"], "--kernel, --config, --config-file or --api-sock"),
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
}
