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
    /// The QEMU driver's binary and OVMF folder (docs/drivers.md).
    public var qemuBinary = "/usr/bin/qemu-system-x86_64"
    public var firmwareDirectory = "/usr/share/OVMF"
    public var consoleLogLimit: Int = 1 << 20
    /// Folders besides `<state>/images` that kernels, initrds and disks may come from.
    public var imageDirectories: [String] = []
    /// Whether definitions may name device nodes (a disk on /dev/sdX).
    public var allowDeviceNodes = false
    /// Jail every VMM (nil: `--no-jail`).
    public var jail: JailConfiguration?
    /// Define the `default` NAT network on the first start (`--no-default-network` turns it off).
    public var defineDefaultNetwork = true
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
        // Resolved, so that /proc's links to VMM files compare equal (re-adoption).
        guard let stateDirectory = ImagePolicy.realPath(stateDirectory) else {
            throw StartupError(description: "cannot resolve \(self.stateDirectory): \(String(cString: strerror(errno)))")
        }
        let images: ImagePolicy
        do {
            try fileManager.createDirectory(atPath: stateDirectory + "/images", withIntermediateDirectories: true)
            images = try ImagePolicy(directories: [stateDirectory + "/images"] + imageDirectories, allowDeviceNodes: allowDeviceNodes)
        } catch let failure as ImagePolicy.Failure {
            throw StartupError(description: failure.description)
        } catch {
            throw StartupError(description: "cannot create \(stateDirectory)/images: \(error.localizedDescription)")
        }
        let store: DefinitionStore
        do { store = try DefinitionStore(path: stateDirectory + "/swiftletd.sqlite") } catch {
            throw StartupError(description: "cannot open the database \(stateDirectory)/swiftletd.sqlite: \(error)")
        }
        if let other = try? SwiftletAPIClient(socketPath: socketPath, timeout: 2).version() {
            throw StartupError(description: "another swiftletd (\(other.version)) already serves \(socketPath)")
        }
        try Self.removeStaleSocket(socketPath)

        let cgroups = CgroupManager(root: cgroupRoot, logger: logger)
        var configuration = SupervisorConfiguration(stateDirectory: stateDirectory, vmmBinary: vmmBinary, images: images)
        configuration.consoleLogLimit = consoleLogLimit
        configuration.jail = jail
        configuration.qemuBinary = qemuBinary
        configuration.firmwareDirectory = firmwareDirectory
        let networks = NetworkManager(store: store, stateDirectory: stateDirectory, tapOwner: jail.map { ($0.uid, $0.gid) }, logger: logger)
        let storage = StorageManager(store: store, images: images, stateDirectory: stateDirectory, logger: logger)
        let supervisor = Supervisor(configuration: configuration, store: store, cgroups: cgroups, networks: networks, storage: storage, logger: logger)
        let api = DaemonAPI(store: store, supervisor: supervisor, logger: logger)
        // Re-adoption asks VMMs over their sockets and autostart waits for VMMs: blocking work, on the actions pool.
        let defineDefault = defineDefaultNetwork
        try await api.actions.run {
            supervisor.adoptRunningVMs()
            // Networks before autostart VMs, which may need them; running VMs' taps are re-attached.
            let running = Set(supervisor.allRuntimes().filter { $0.value.pid != nil }.map(\.key))
            networks.adopt(runningVMs: running, tapsFile: { supervisor.runDirectory($0).tapsFile },
                           allVMs: ((try? store.all()) ?? []).map(\.definition.name), defineDefault: defineDefault)
            storage.autostartPools()
            supervisor.autostart()
        }
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
        // Copying a log is blocking file work: on the queries pool, not the async executor.
        let rotation = Task.detached { [queries = api.queries] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(5))
                try? await queries.run { supervisor.rotateConsoleLogs() }
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

    /// Clears the way for the listening socket: nothing there is fine; a
    /// socket nobody listens on (a daemon that died) is removed; anything
    /// else (a file, a folder, a live socket) is left alone and refused.
    static func removeStaleSocket(_ path: String) throws {
        var status = stat()
        guard lstat(path, &status) == 0 else {
            if errno == ENOENT { return }
            throw StartupError(description: "cannot inspect --socket \(path): \(String(cString: strerror(errno)))")
        }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw StartupError(description: "--socket \(path) exists and is not a socket; swiftletd will not remove it: pass another --socket path")
        }
        do {
            _ = try UnixHTTPClient(socketPath: path, timeout: 2).request("GET", "/")
        } catch let failure as UnixHTTPClient.Failure where failure.isNotListening {
            guard unlink(path) == 0 || errno == ENOENT else {
                throw StartupError(description: "cannot remove the stale socket \(path): \(String(cString: strerror(errno)))")
            }
            return
        } catch {
            // Something accepted the connection: someone listens.
        }
        throw StartupError(description: "--socket \(path) is in use by another process (not a swiftletd answering /v1/version); stop it or pass another --socket path")
    }
}
