import Foundation
import Testing
@testable import VMM

/// Locating and building the guest test kit, and booting its programs.
enum KitGuest {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let kitDirectory = packageRoot.appendingPathComponent("guest-kit")
    static let buildDirectory = kitDirectory.appendingPathComponent("build")

    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// True when /dev/kvm can be opened for reading and writing.
    static var kvmUsable: Bool { access("/dev/kvm", R_OK | W_OK) == 0 }

    /// Guest tests run where KVM is usable, and always under CI=true, where a
    /// missing /dev/kvm must fail rather than skip.
    static var shouldRun: Bool { kvmUsable || isCI }
    static let skipReason: Comment = "needs /dev/kvm (absent or not accessible here); set CI=true to make this a failure"

    /// Builds the kit once per test process if its programs are missing.
    static let built: Result<Void, KitError> = {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/make")
        process.arguments = ["-s", "-C", kitDirectory.path]
        let errors = Pipe()
        process.standardError = errors
        do {
            try process.run()
        } catch {
            return .failure(KitError(message: "cannot run make for the guest kit: \(error)"))
        }
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            return .failure(KitError(message: "building the guest kit failed (scripts/install-deps installs gcc and make):\n\(text)"))
        }
        return .success(())
    }()

    struct KitError: Error, CustomStringConvertible { let message: String; var description: String { message } }

    static func program(_ name: String) throws -> String {
        try built.get()
        let path = buildDirectory.appendingPathComponent("\(name).elf").path
        guard FileManager.default.fileExists(atPath: path) else { throw KitError(message: "kit program \(path) was not built") }
        return path
    }

    /// Boots kit program `name` in-process and returns how it ended and what it printed.
    static func boot(_ name: String, cpus: Int = 1, memory: UInt64 = 128 << 20, cmdline: String = "", onReboot: RebootAction = .exit) throws -> (VMExitReason, String) {
        let configuration = VMConfiguration(kernelPath: try program(name), commandLine: cmdline, cpuCount: cpus,
                                            memorySize: memory, serial: .none, onReboot: onReboot)
        let output = CapturingSerialOutput()
        let machine = try VirtualMachine(configuration: configuration, serialOutput: output)
        let reason = try machine.run()
        return (reason, output.text)
    }
}
