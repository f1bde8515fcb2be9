import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Spawning and inspecting VMM processes through /proc and posix_spawn.
enum HostProcess {
    // glibc's posix_spawn flags (spawn.h, __USE_GNU for SETSID), not all exported to Swift.
    static let spawnSetSignalDefaults: Int16 = 0x04
    static let spawnSetSignalMask: Int16 = 0x08
    static let spawnSetSession: Int16 = 0x80

    struct SpawnFailure: Error, CustomStringConvertible {
        let step: String
        let code: Int32
        var description: String { "\(step): \(String(cString: strerror(code)))" }
    }

    /// Starts `binary` in a new session (so it outlives the daemon and its
    /// terminal), with stdin/stdout/stderr opened from the given paths, an
    /// empty signal mask and default handlers for the stop signals.
    static func spawn(binary: String, arguments: [String], stdinPath: String, stdoutPath: String, stderrPath: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // A FIFO opened read-write never reports end of file to the VMM, and opening it does not block.
        posix_spawn_file_actions_addopen(&actions, 0, stdinPath, O_RDWR, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_APPEND | O_CREAT, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_TRUNC | O_CREAT, 0o600)
        // Nothing else of the daemon's (its listening socket, the database) may live on in the VMM.
        closeInheritedDescriptors(&actions)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, spawnSetSession | spawnSetSignalMask | spawnSetSignalDefaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        let argv = ([binary] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, binary, &actions, &attributes, argv, environ)
        guard result == 0 else { throw SpawnFailure(step: "starting \(binary)", code: result) }
        return pid
    }

    typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    /// glibc 2.34's posix_spawn_file_actions_addclosefrom_np, which Swift's Glibc module does not export.
    static let closeFrom: CloseFrom? = {
        // SAFETY: RTLD_DEFAULT is the null handle on glibc; the symbol has the C signature above.
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: CloseFrom.self)
    }()

    static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
        if let closeFrom, closeFrom(&actions, 3) == 0 { return }
        // Older glibc: close what is open now, one by one.
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            if let fd = Int32(entry), fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
        }
    }

    /// Blocks until the child `pid` ends; the raw wait status.
    static func waitForExit(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, 0)
            if result == pid { return status }
            if result < 0 && errno == EINTR { continue }
            return nil
        }
    }

    /// Writes `pid` to `path` atomically (a temporary file renamed over it),
    /// flushed, so a reader sees the whole pid or no file.
    static func writePidFile(_ pid: pid_t, to path: String) throws {
        try Data("\(pid)\n".utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    /// Live swiftlet-vmm processes whose stdout is a `console.log` in a VM
    /// folder under `directory` (`<state>/vms/`): pid -> VM name. Finds the
    /// VMMs a daemon on this state folder started, pid file or not.
    static func findVMMs(consoleLogsUnder directory: String) -> [pid_t: String] {
        var found: [pid_t: String] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), pid != getpid(),
                  let executable = readLink("/proc/\(pid)/exe"),
                  isHypervisor((executable as NSString).lastPathComponent),
                  var console = readLink("/proc/\(pid)/fd/1") else { continue }
            // An undefined VM's folder is gone: the link then ends in " (deleted)".
            if console.hasSuffix(" (deleted)") { console.removeLast(" (deleted)".count) }
            guard console.hasPrefix(directory), console.hasSuffix("/console.log") else { continue }
            let name = String(console.dropFirst(directory.count).dropLast("/console.log".count))
            guard !name.isEmpty, !name.contains("/") else { continue }
            found[pid] = name
        }
        return found
    }

    /// The programs swiftletd runs VMs with (swiftlet-vmm, QEMU), by base name.
    static func isHypervisor(_ baseName: String) -> Bool {
        baseName.hasPrefix("swiftlet-vmm") || baseName.hasPrefix("qemu-system")
    }

    /// The base name of a process's executable.
    static func executableName(_ pid: pid_t) -> String? {
        readLink("/proc/\(pid)/exe").map { ($0 as NSString).lastPathComponent }
    }

    static func isAlive(_ pid: pid_t) -> Bool {
        kill(pid, 0) == 0 || errno == EPERM
    }

    static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4097)
        let count = readlink(path, &buffer, 4096)
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Is `pid` a swiftlet-vmm whose console goes to `consoleLog`? Guards
    /// re-adoption against a recycled pid.
    static func isVMM(_ pid: pid_t, consoleLog: String) -> Bool {
        guard let executable = readLink("/proc/\(pid)/exe") else { return false }
        guard isHypervisor((executable as NSString).lastPathComponent) else { return false }
        return readLink("/proc/\(pid)/fd/1") == consoleLog
    }

    struct Usage {
        var state: Character
        var cpuSeconds: Double
        var startTicks: UInt64
        var rssBytes: Int?
        var threads: Int?
    }

    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    static func usage(_ pid: pid_t) -> Usage? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after the command name (which may hold spaces): state is field 3.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let state = fields[0].first,
              let user = Double(fields[11]), let system = Double(fields[12]), let start = UInt64(fields[19]) else { return nil }
        var usage = Usage(state: state, cpuSeconds: (user + system) / ticksPerSecond, startTicks: start)
        if let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) {
            for line in status.split(separator: "\n") {
                let parts = line.split(whereSeparator: \.isWhitespace)
                if line.hasPrefix("VmRSS:"), parts.count >= 2, let kib = Int(parts[1]) { usage.rssBytes = kib * 1024 }
                if line.hasPrefix("Threads:"), parts.count >= 2 { usage.threads = Int(parts[1]) }
            }
        }
        return usage
    }

    static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGKILL: "SIGKILL"
        case SIGTERM: "SIGTERM"
        case SIGSEGV: "SIGSEGV"
        case SIGABRT: "SIGABRT"
        case SIGBUS: "SIGBUS"
        case SIGILL: "SIGILL"
        case SIGINT: "SIGINT"
        case SIGHUP: "SIGHUP"
        default: "signal \(signal)"
        }
    }
}
