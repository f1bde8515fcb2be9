import Foundation
import Hummingbird
import Logging
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// swiftletd as a whole: opens the store, re-adopts running VMs, autostarts,
/// and serves the REST API on a Unix socket (mode 0600) until cancelled.
public struct Daemon {
    public var stateDirectory: String
    public var socketPath: String
    public var vmmBinary: String
    public var cgroupRoot: String = "/sys/fs/cgroup"
    public var consoleLogLimit: Int = 1 << 20
    /// Jail every VMM (nil: `--no-jail`).
    public var jail: JailConfiguration?
    public var logger: Logger

    public init(stateDirectory: String, socketPath: String, vmmBinary: String, logger: Logger) {
        self.stateDirectory = stateDirectory
        self.socketPath = socketPath
        self.vmmBinary = vmmBinary
        self.logger = logger
    }

    public struct StartupError: Error, CustomStringConvertible { public let description: String }

    public func run() async throws {
        // Files and the socket are the daemon user's alone.
        umask(0o077)
        let fileManager = FileManager.default
        do {
            try fileManager.createDirectory(atPath: stateDirectory + "/vms", withIntermediateDirectories: true)
            try fileManager.createDirectory(atPath: (socketPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        } catch {
            throw StartupError(description: "cannot create \(stateDirectory) or the socket's folder: \(error.localizedDescription); pass --state-dir/--socket to a writable place")
        }
        let store: DefinitionStore
        do { store = try DefinitionStore(path: stateDirectory + "/swiftletd.sqlite") } catch {
            throw StartupError(description: "cannot open the database \(stateDirectory)/swiftletd.sqlite: \(error)")
        }
        if let other = try? SwiftletAPIClient(socketPath: socketPath, timeout: 2).version() {
            throw StartupError(description: "another swiftletd (\(other.version)) already serves \(socketPath)")
        }
        unlink(socketPath)

        let cgroups = CgroupManager(root: cgroupRoot, logger: logger)
        var configuration = SupervisorConfiguration(stateDirectory: stateDirectory, vmmBinary: vmmBinary)
        configuration.consoleLogLimit = consoleLogLimit
        configuration.jail = jail
        let supervisor = Supervisor(configuration: configuration, store: store, cgroups: cgroups, logger: logger)
        supervisor.adoptRunningVMs()
        supervisor.autostart()

        let api = DaemonAPI(store: store, supervisor: supervisor, logger: logger)
        let socketPath = socketPath
        let logger = logger
        let application = Application(
            router: api.router(),
            configuration: .init(address: .unixDomainSocket(path: socketPath), serverName: "swiftletd"),
            onServerRunning: { _ in
                chmod(socketPath, 0o600)
                logger.info("listening", metadata: ["socket": "\(socketPath)", "vms": "\((try? store.count()) ?? 0)"])
            },
            logger: logger)
        let rotation = Task.detached {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(5))
                supervisor.rotateConsoleLogs()
            }
        }
        defer { rotation.cancel() }
        // Hummingbird drains requests on SIGTERM/SIGINT; event streams would never end by themselves.
        let stopSignals = [SIGTERM, SIGINT].map { signal in
            let source = DispatchSource.makeSignalSource(signal: signal, queue: .global())
            source.setEventHandler { supervisor.finishEventStreams() }
            source.resume()
            return source
        }
        defer { stopSignals.forEach { $0.cancel() } }
        try await application.runService()
    }
}
