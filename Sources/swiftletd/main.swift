import ArgumentParser
import Foundation
import Logging
import SwiftletDaemon

/// swiftletd: the Swiftlet VM manager (docs/swiftletd.md).
@main
struct SwiftletDaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftletd",
        abstract: "Keep VM definitions and run one swiftlet-vmm (or QEMU) per running VM, behind a REST API on a Unix socket.",
        discussion: "Running VMs outlive swiftletd; a restarted swiftletd re-adopts them. See docs/swiftletd.md.")

    @Option(help: "Folder for the database, VM run files and console logs.")
    var stateDir = "/var/lib/swiftlet"

    @Option(help: "The REST API's Unix socket (created with mode 0600).")
    var socket = "/run/swiftlet/swiftletd.sock"

    @Option(help: "The swiftlet-vmm binary (default: beside swiftletd, else on PATH).")
    var vmm: String?

    @Option(help: "The QEMU binary for VMs with hypervisor: qemu (docs/drivers.md).")
    var qemu = "/usr/bin/qemu-system-x86_64"

    @Option(help: "Where OVMF's UEFI firmware is (OVMF_CODE_4M.fd, OVMF_VARS_4M.fd), for QEMU VMs with firmware: uefi.")
    var firmwareDir = "/usr/share/OVMF"

    @Option(help: "Where the cgroup v1 and/or v2 hierarchies are mounted, for per-VM limits.")
    var cgroupRoot = "/sys/fs/cgroup"

    @Option(help: "Rotate a VM's console log past this many bytes.")
    var consoleLogLimit = 1 << 20

    @Option(name: .customLong("image-dir"), help: "A folder VM kernels, initrds and disks may come from, besides <state-dir>/images (repeatable).")
    var imageDirectories: [String] = []

    @Flag(help: "Let VM definitions name device nodes (a disk on a block device); refused by default.")
    var allowDeviceNodes = false

    @Flag(help: "Run VMMs unjailed (hosts where swiftletd cannot run as root or lacks namespaces).")
    var noJail = false

    @Option(help: "The swiftlet-jailer binary (default: beside swiftletd, else on PATH).")
    var jailer: String?

    @Option(help: "Where VM jails are built (default: <state-dir>/jail); disk images must be on its file system.")
    var jailDir: String?

    @Option(help: "The uid jailed VMMs run as.")
    var jailUid: UInt32 = JailConfiguration.defaultUID

    @Option(help: "The gid jailed VMMs run as.")
    var jailGid: UInt32 = JailConfiguration.defaultGID

    @Flag(help: "Do not define the `default` NAT network (192.168.122.0/24 or the first free 192.168.N.0/24) on the first start.")
    var noDefaultNetwork = false

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
        daemon.qemuBinary = qemu
        daemon.firmwareDirectory = firmwareDir
        daemon.consoleLogLimit = consoleLogLimit
        daemon.imageDirectories = imageDirectories
        daemon.allowDeviceNodes = allowDeviceNodes
        daemon.defineDefaultNetwork = !noDefaultNetwork
        if !noJail {
            guard geteuid() == 0 else {
                throw ValidationError("jailing VMMs needs root (namespaces, pivot_root, mknod); run swiftletd as root or pass --no-jail")
            }
            guard let jailerBinary = jailer ?? Self.locate("swiftlet-jailer") else {
                throw ValidationError("swiftlet-jailer was found neither beside swiftletd nor on PATH; pass --jailer PATH or --no-jail")
            }
            guard access(jailerBinary, X_OK) == 0 else {
                throw ValidationError("--jailer '\(jailerBinary)' is not an executable file; give the swiftlet-jailer binary or pass --no-jail")
            }
            daemon.jail = JailConfiguration(jailerBinary: jailerBinary, chrootBase: jailDir ?? stateDir + "/jail", uid: jailUid, gid: jailGid)
        }
        do {
            try await daemon.run()
        } catch let error as Daemon.StartupError {
            throw ValidationError(error.description)
        }
    }

    static func locateVMM() -> String? { locate("swiftlet-vmm") }

    /// A binary beside swiftletd, else on PATH.
    static func locate(_ name: String) -> String? {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let sibling = ((me as NSString).deletingLastPathComponent as NSString).appendingPathComponent(name)
        if access(sibling, X_OK) == 0 { return sibling }
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}
