import Foundation
import SwiftletClient
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Paths and guests the daemon tests use.
enum TestEnvironment {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
    static var kvmUsable: Bool { access("/dev/kvm", R_OK | W_OK) == 0 }
    /// Tests that boot guests run where KVM is usable, and always under CI=true.
    static var guestsRun: Bool { kvmUsable || isCI }
    static let kvmSkip: Comment = "needs /dev/kvm (absent or not accessible here); set CI=true to make this a failure"

    /// The folder of the test runner, which is where `swift build` puts swiftletd, swiftlet and swiftlet-vmm.
    static var binaryDirectory: String {
        let runner = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return (runner as NSString).deletingLastPathComponent
    }
    /// Runs a host tool (ip, qemu-img, nft); its status and combined output.
    @discardableResult
    static func run(_ tool: String, _ arguments: [String]) -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        guard (try? process.run()) != nil else { return (-1, "cannot run \(tool)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func binary(_ name: String) -> String { binaryDirectory + "/" + name }

    struct Failure: Error, CustomStringConvertible { let description: String }

    static let kitBuilt: Result<Void, Failure> = {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/make")
        process.arguments = ["-s", "-C", packageRoot.appendingPathComponent("guest-kit").path]
        process.standardOutput = FileHandle.nullDevice
        do { try process.run() } catch { return .failure(Failure(description: "cannot run make: \(error)")) }
        process.waitUntilExit()
        return process.terminationStatus == 0 ? .success(()) : .failure(Failure(description: "make -C guest-kit failed"))
    }()

    static func kitProgram(_ name: String) throws -> String {
        try kitBuilt.get()
        return packageRoot.appendingPathComponent("guest-kit/build/\(name).elf").path
    }

    /// The default guest: SWIFTLET_GUEST_CACHE (a shared cache) or this checkout's .cache/guest, its `current` build.
    static var linuxGuestDirectory: String {
        let cache = ProcessInfo.processInfo.environment["SWIFTLET_GUEST_CACHE"] ?? packageRoot.appendingPathComponent(".cache/guest").path
        return cache + "/current"
    }

    /// The folders daemon tests take images from (swiftletd refuses others): the kit's build and the default guest.
    static var imageDirectories: [String] {
        [packageRoot.appendingPathComponent("guest-kit/build").path, linuxGuestDirectory].filter { FileManager.default.fileExists(atPath: $0) }
    }
    static var linuxGuestBuilt: Bool { FileManager.default.fileExists(atPath: linuxGuestDirectory + "/vmlinux") }
}

/// A real swiftletd process on a temporary socket and state folder.
final class DaemonHarness: @unchecked Sendable {
    let directory: String
    let socket: String
    let stateDirectory: String
    /// The daemon's pid (spawned and reaped here, not through Foundation's Process).
    private(set) var pid: pid_t?
    let logPath: String
    /// More swiftletd options (e.g. --vmm of a fake VMM, which wins as the later one).
    let extraArguments: [String]
    /// The network namespace the daemon runs in (`ip netns exec`); nil: the test runner's.
    let networkNamespace: String?

    /// Without a namespace, the daemon defines no `default` network: its
    /// bridge and dnsmasq would land in the host's own namespace.
    init(label: String = "daemon", extraArguments: [String] = [], networkNamespace: String? = nil) throws {
        self.extraArguments = extraArguments
        self.networkNamespace = networkNamespace
        directory = NSTemporaryDirectory() + "swiftletd-test-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        socket = directory + "/swiftletd.sock"
        stateDirectory = directory + "/state"
        logPath = directory + "/swiftletd.log"
        try start()
    }

    var client: SwiftletAPIClient { SwiftletAPIClient(socketPath: socket) }
    var http: UnixHTTPClient { UnixHTTPClient(socketPath: socket) }

    /// `<state>/images`, which swiftletd allows images from by default.
    var imagesDirectory: String { stateDirectory + "/images" }

    func start() throws {
        _ = TestEnvironment.kitBuilt
        var arguments = [TestEnvironment.binary("swiftletd"), "--state-dir", stateDirectory, "--socket", socket,
                         "--vmm", TestEnvironment.binary("swiftlet-vmm"), "--cgroup-root", directory + "/no-cgroup", "--log-level", "debug"]
        for folder in TestEnvironment.imageDirectories { arguments += ["--image-dir", folder] }
        // VMs are jailed by default, which needs root.
        if geteuid() != 0 { arguments.append("--no-jail") }
        if networkNamespace == nil { arguments.append("--no-default-network") }
        arguments += extraArguments
        if let networkNamespace { arguments = ["/usr/sbin/ip", "netns", "exec", networkNamespace] + arguments }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_APPEND | O_CREAT, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The test runner's threads may block signals; the daemon needs SIGTERM.
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, arguments[0], &actions, &attributes, argv, environ)
        guard result == 0 else { throw TestEnvironment.Failure(description: "cannot start swiftletd: \(String(cString: strerror(result)))") }
        pid = child
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if (try? client.version()) != nil { return }
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child { pid = nil; break }
            usleep(20_000)
        }
        throw TestEnvironment.Failure(description: "swiftletd did not come up; its log:\n\(self.log())")
    }

    func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Ends the daemon: SIGKILL (a crash) or SIGTERM (a clean stop). VMs keep running.
    func stop(signal: Int32 = SIGTERM) {
        guard let pid else { return }
        kill(pid, signal)
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(15)
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline {
                Issue.record("swiftletd did not stop within 15 s of signal \(signal); killing it")
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                break
            }
            usleep(10_000)
        }
        self.pid = nil
    }

    /// Stops the daemon and every VMM it left running (by the pids in their pid files), then removes the folder.
    /// The process is a swiftlet-vmm, a QEMU, or one of the tests' fake VMMs (a
    /// Python script, so its executable is python3: its command line names it).
    static func isVMM(_ pid: pid_t) -> Bool {
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe"),
           exe.contains("swiftlet-vmm") || exe.contains("qemu-system") { return true }
        // /proc files report size 0: read to the end rather than by size.
        guard let commandLine = FileHandle(forReadingAtPath: "/proc/\(pid)/cmdline")?.readDataToEndOfFile() else { return false }
        return String(decoding: commandLine, as: UTF8.self).contains("fake-vmm")
    }

    func tearDown() {
        stop()
        let vms = stateDirectory + "/vms"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: vms)) ?? [] {
            if let text = try? String(contentsOfFile: "\(vms)/\(name)/vmm.pid", encoding: .utf8),
               let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)),
               Self.isVMM(pid) {
                kill(pid, SIGKILL)
            }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Runs the swiftlet CLI against this daemon.
    func cli(_ arguments: [String], environment extra: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestEnvironment.binary("swiftlet"))
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["SWIFTLET_SOCKET": socket].merging(extra) { $1 }) { $1 }
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    /// Polls until the VM is in `state` (or the time is up); the last info seen.
    @discardableResult
    func wait(for name: String, state: VMState, seconds: Double = 30) throws -> VMInfo {
        let deadline = Date().addingTimeInterval(seconds)
        var info = try client.get(name)
        while info.state != state && Date() < deadline {
            usleep(20_000)
            info = try client.get(name)
        }
        return info
    }

    func definition(_ name: String, program: String = "halt", memoryMiB: Int = 64) throws -> VMDefinition {
        VMDefinition(name: name, memoryMiB: memoryMiB, kernel: try TestEnvironment.kitProgram(program))
    }

    /// Waits until the console log has `text`.
    func consoleContains(_ name: String, _ text: String, seconds: Double = 20) throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if String(decoding: try client.consoleLog(name), as: UTF8.self).contains(text) { return true }
            usleep(20_000)
        }
        return false
    }
}
