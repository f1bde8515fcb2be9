import Foundation
import Testing

/// Runs the real swiftlet-vmm binary with bad input: each case must end with
/// status 1 and one clear line on stderr, before any guest starts.
@Suite("swiftlet-vmm bad input")
struct CommandLineTests {
    static var binary: String {
        // The test runner lives in the same build folder as the executables.
        let runner = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: runner).deletingLastPathComponent().appendingPathComponent("swiftlet-vmm").path
    }

    static func run(_ arguments: [String]) throws -> (status: Int32, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = Pipe()
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let data = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static let temporaryDirectory: URL = {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-cli-tests-\(getpid())")
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }()

    static func file(_ name: String, bytes: [UInt8]) -> String {
        let url = temporaryDirectory.appendingPathComponent(name)
        _ = FileManager.default.createFile(atPath: url.path, contents: Data(bytes))
        return url.path
    }

    @Test("each bad input gets status 1 and a one-line message naming it", arguments: [
        (["--kernel", "/nonexistent/vmlinux"], "kernel '/nonexistent/vmlinux' does not exist"),
        (["--kernel", "/etc/hostname", "--cpus", "0"], "invalid cpus '0': expected 1 to 254"),
        (["--kernel", "/etc/hostname", "--cpus", "300"], "invalid cpus '300': expected 1 to 254"),
        (["--kernel", "/etc/hostname", "--memory", "4K"], "invalid memory '4 KiB'"),
        (["--kernel", "/etc/hostname", "--serial", "telnet"], "invalid serial 'telnet'"),
        (["--kernel", "/etc/hostname", "--kvm-device", "/nonexistent/kvm"], "cannot open /nonexistent/kvm"),
        (["--config", "/nonexistent/vm.json"], "config file '/nonexistent/vm.json' does not exist"),
        (["--no-api"], "invalid option '--no-api': expected with --config-file"),
        (["--seccomp-filter", "/nonexistent/filter.bpf", "--no-seccomp"], "invalid option '--no-seccomp': expected not with --seccomp-filter"),
    ])
    func badInput(arguments: [String], message: String) throws {
        let (status, stderr) = try Self.run(arguments)
        #expect(status == 1, "stderr: \(stderr)")
        #expect(stderr.contains(message), "stderr: \(stderr)")
        #expect(stderr.split(separator: "\n").count == 1, "one line: \(stderr)")
    }

    @Test("an unknown config key is named with the valid ones")
    func unknownConfigKey() throws {
        let path = Self.file("typo.json", bytes: Array(#"{"kernel": "/etc/hostname", "vcpus": 2}"#.utf8))
        let (status, stderr) = try Self.run(["--config", path])
        #expect(status == 1)
        #expect(stderr.contains("'vcpus'") && stderr.contains("cpus"), "stderr: \(stderr)")
    }

    @Test("--help explains the exit statuses and shows an example")
    func help() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["--help"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(text.contains("EXIT STATUS") && text.contains("--on-reboot") && text.contains("EXAMPLE"))
    }
}
