import ArgumentParser
import Foundation
import Logging
import SwiftletDaemon

/// swiftletd: the Swiftlet VM manager (docs/swiftletd.md).
@main
struct SwiftletDaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftletd",
        abstract: "Keep VM definitions and run one swiftlet-vmm per running VM, behind a REST API on a Unix socket.",
        discussion: "Running VMs outlive swiftletd; a restarted swiftletd re-adopts them. See docs/swiftletd.md.")

    @Option(help: "Folder for the database, VM run files and console logs.")
    var stateDir = "/var/lib/swiftlet"

    @Option(help: "The REST API's Unix socket (created with mode 0600).")
    var socket = "/run/swiftlet/swiftletd.sock"

    @Option(help: "The swiftlet-vmm binary (default: beside swiftletd, else on PATH).")
    var vmm: String?

    @Option(help: "Where the cgroup v1 and/or v2 hierarchies are mounted, for per-VM limits.")
    var cgroupRoot = "/sys/fs/cgroup"

    @Option(help: "Rotate a VM's console log past this many bytes.")
    var consoleLogLimit = 1 << 20

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "swiftletd")
        guard let binary = vmm ?? Self.locateVMM() else {
            throw ValidationError("swiftlet-vmm was found neither beside swiftletd nor on PATH; pass --vmm PATH")
        }
        var daemon = Daemon(stateDirectory: stateDir, socketPath: socket, vmmBinary: binary, logger: logger)
        daemon.cgroupRoot = cgroupRoot
        daemon.consoleLogLimit = consoleLogLimit
        do {
            try await daemon.run()
        } catch let error as Daemon.StartupError {
            throw ValidationError(error.description)
        }
    }

    static func locateVMM() -> String? {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let sibling = ((me as NSString).deletingLastPathComponent as NSString).appendingPathComponent("swiftlet-vmm")
        if access(sibling, X_OK) == 0 { return sibling }
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(directory)/swiftlet-vmm"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}
