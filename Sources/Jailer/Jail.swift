import CKVM
import Cgroups
import Glibc
import HostSystem

/// swiftlet-jailer's errors: each names the failing step and wraps its cause.
public enum JailerError: Error, CustomStringConvertible {
    case invalidArgument(String)
    case execFile(path: String, reason: String)
    case systemCall(step: String, cause: SystemCallError)
    case cgroup(CgroupError)

    public var description: String {
        switch self {
        case .invalidArgument(let message): message
        case .execFile(let path, let reason): "--exec-file '\(path)' is invalid: \(reason)"
        case .systemCall(let step, let cause): "\(step): \(cause)"
        case .cgroup(let cause): "setting up cgroups: \(cause)"
        }
    }
}

/// Builds the jail and execs the VMM in it, in Firecracker's order: copy the
/// exec file in, resource limits, cgroups, network namespace, a new mount
/// namespace with pivot_root into the jail, device nodes, optional session
/// and PID namespace, then drop to uid/gid and exec with an empty environment.
public struct Jail {
    public let configuration: JailerConfiguration
    /// Where the cgroup hierarchies are mounted.
    public let cgroupRoot: String

    /// The device nodes Firecracker's jailer creates: (path, major, minor).
    public static let deviceNodes: [(String, UInt32, UInt32)] = [
        ("/dev/kvm", 10, 232), ("/dev/net/tun", 10, 200), ("/dev/urandom", 1, 9),
    ]

    /// /dev/userfaultfd's major number (a misc device); its minor is the
    /// host's, from /proc/misc.
    public static let userfaultfdMajor: UInt32 = 10

    /// The minor number /proc/misc (`MINOR NAME` lines) gives `userfaultfd`,
    /// or nil when the host has no /dev/userfaultfd (before Linux 6.1, or not
    /// built), as Firecracker's jailer reads it.
    public static func userfaultfdMinor(procMisc text: String) -> UInt32? {
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 2, fields[1] == "userfaultfd", let minor = UInt32(fields[0]) { return minor }
        }
        return nil
    }

    /// A /proc file's text (their size reads as 0, so read until end of
    /// file), at most 64 KiB; nil if it cannot be read.
    static func readProcFile(_ path: String) -> String? {
        guard let file = try? OwnedFileDescriptor.open(path, flags: O_RDONLY) else { return nil }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 16 {
            // SAFETY: read writes at most chunk.count bytes into the array's storage.
            let count = chunk.withUnsafeMutableBytes { raw in try? file.read(into: raw) }
            guard let count, count > 0 else { break }
            bytes += chunk.prefix(count)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    public init(configuration: JailerConfiguration, cgroupRoot: String = "/sys/fs/cgroup") {
        self.configuration = configuration
        self.cgroupRoot = cgroupRoot
    }

    static func microseconds(_ clock: clockid_t) -> UInt64 {
        var now = timespec()
        _ = try? systemCall("clock_gettime") { clock_gettime(clock, &now) }
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1_000
    }

    /// Runs `body` (a syscall returning -1 on failure) and names the step on error.
    static func step<Result: FixedWidthInteger>(_ name: @autoclosure () -> String, _ body: () -> Result) throws(JailerError) -> Result {
        do {
            return try systemCall(name(), body)
        } catch {
            throw .systemCall(step: name(), cause: error)
        }
    }

    static func createDirectories(_ path: String, mode: mode_t = 0o755) throws(JailerError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            do {
                _ = try systemCall("mkdir \(current)") { mkdir(current, mode) }
            } catch where error.errno == Errno(rawValue: EEXIST) {
                continue
            } catch {
                throw .systemCall(step: "creating \(current)", cause: error)
            }
        }
    }

    /// The jailed process must not inherit the caller's descriptors (its
    /// sockets, databases): close everything but stdin/stdout/stderr.
    static func closeInheritedDescriptors() {
        if (try? systemCall("close_range", { ckvm_close_from(3) })) != nil { return }
        let limit = min(Int32(truncatingIfNeeded: sysconf(Int32(_SC_OPEN_MAX))), 65_536)
        guard limit > 3 else { return }
        // close() is not retried on EINTR on Linux: the fd is gone either way.
        for fd in 3..<limit { _ = close(fd) }
    }

    /// Copies the exec file into the jail (Firecracker copies rather than
    /// links, so the jailed process can never change the host's binary).
    func copyExecFile(_ source: OwnedFileDescriptor, to destination: String) throws(JailerError) {
        let path = configuration.execFile
        _ = try? systemCall("unlink \(destination)") { unlink(destination) }  // a leftover from an earlier run with this id
        let target: OwnedFileDescriptor
        do { target = try OwnedFileDescriptor.open(destination, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o755) } catch {
            throw .systemCall(step: "creating \(destination)", cause: error)
        }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            // SAFETY: the buffer is `buffer`'s own storage, alive for the call.
            let read = buffer.withUnsafeMutableBytes { raw in Result { () throws(SystemCallError) in try source.read(into: raw) } }
            let count: Int
            do { count = try read.get() } catch { throw .systemCall(step: "reading \(path)", cause: error) }
            if count == 0 { break }
            do { try target.writeAll(buffer[0..<count]) } catch { throw .systemCall(step: "writing \(destination)", cause: error) }
        }
        _ = try Self.step("chmod \(destination)") { fchmod(target.rawValue, 0o755) }
    }

    /// Opens `--exec-file`, which must be a regular file.
    func openExecFile() throws(JailerError) -> OwnedFileDescriptor {
        let path = configuration.execFile
        let source: OwnedFileDescriptor
        do { source = try OwnedFileDescriptor.open(path, flags: O_RDONLY) } catch {
            throw .execFile(path: path, reason: "cannot open it (\(error.errno))")
        }
        let status: stat
        do { status = try source.status() } catch { throw .systemCall(step: "fstat \(path)", cause: error) }
        guard status.st_mode & S_IFMT == S_IFREG else { throw .execFile(path: path, reason: "not a regular file; give the VMM binary") }
        return source
    }

    /// Replaces the process with the jailed exec file; returns only by throwing.
    public func run() throws(JailerError) -> Never {
        let startTime = Self.microseconds(CLOCK_MONOTONIC)
        let startCPUTime = Self.microseconds(CLOCK_PROCESS_CPUTIME_ID)
        let configuration = configuration
        Self.closeInheritedDescriptors()
        // The jail's directories (/dev, /dev/net, /proc) must be searchable by
        // the VMM's user whatever umask the caller has (swiftletd's is 077);
        // the caller's umask is restored for the VMM.
        let callerUmask = umask(0o022)

        // The exec file is checked before anything is created.
        let execFile = try openExecFile()
        let root = configuration.chrootDirectory
        try Self.createDirectories(root)
        try copyExecFile(execFile, to: root + "/" + configuration.execFileName)

        for (resource, value) in configuration.effectiveResourceLimits {
            let number = resource == .fileSize ? CKVM_RLIMIT_FSIZE : CKVM_RLIMIT_NOFILE
            _ = try Self.step("setrlimit \(resource.rawValue)=\(value)") { ckvm_set_resource_limit(number, value) }
        }

        if !configuration.cgroups.isEmpty {
            do {
                try CgroupFiles.apply(configuration.cgroups, version: configuration.cgroupVersion,
                                      hierarchies: CgroupHierarchies(root: cgroupRoot),
                                      parent: configuration.cgroupParent, id: configuration.id, pid: getpid())
            } catch {
                throw .cgroup(error)
            }
        }

        if let namespace = configuration.networkNamespace {
            let handle: OwnedFileDescriptor
            do { handle = try OwnedFileDescriptor.open(namespace, flags: O_RDONLY) } catch {
                throw .invalidArgument("--netns '\(namespace)' is invalid: cannot open it (\(error.errno)); give a network namespace handle such as /var/run/netns/NAME")
            }
            _ = try Self.step("joining the network namespace \(namespace)") { ckvm_setns(handle.rawValue, CKVM_CLONE_NEWNET) }
        }

        // Opened before the pivot: there is no /dev/null inside the jail.
        var devNull: OwnedFileDescriptor?
        if configuration.daemonize {
            do { devNull = try OwnedFileDescriptor.open("/dev/null", flags: O_RDWR) } catch {
                throw .systemCall(step: "opening /dev/null", cause: error)
            }
        }

        // Read before the pivot, as Firecracker's jailer does: the jail has no /proc/misc.
        let userfaultfdMinor = Self.readProcFile("/proc/misc").flatMap { Self.userfaultfdMinor(procMisc: $0) }
        try pivotIntoJail(root)
        try createDeviceNodes(userfaultfdMinor: userfaultfdMinor)
        _ = try Self.step("chown / (the jail root) to \(configuration.uid):\(configuration.gid)") { chown("/", configuration.uid, configuration.gid) }

        if let devNull {
            _ = try Self.step("setsid (--daemonize; the jailer must not be a process group leader)") { setsid() }
            for target in Int32(0)...2 { _ = try Self.step("redirecting fd \(target) to /dev/null") { dup2(devNull.rawValue, target) } }
        }

        var parentCPUTime: UInt64?
        if configuration.newPIDNamespace {
            _ = try Self.step("unshare(CLONE_NEWPID)") { ckvm_unshare(CKVM_CLONE_NEWPID) }
            parentCPUTime = Self.microseconds(CLOCK_PROCESS_CPUTIME_ID)
            let child = try Self.step("fork into the new PID namespace") { fork() }
            if child > 0 {
                // The parent records the child's pid (as seen from outside) and leaves.
                let pidFile = "/" + configuration.pidFileName
                if let file = try? OwnedFileDescriptor.open(pidFile, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644) {
                    try? file.writeAll(Array("\(child)\n".utf8))
                }
                _exit(0)
            }
        }

        try mountProc()
        umask(callerUmask)
        _ = try Self.step("setgroups (dropping supplementary groups)") { ckvm_setgroups_none() }
        _ = try Self.step("setgid \(configuration.gid)") { setgid(configuration.gid) }
        _ = try Self.step("setuid \(configuration.uid)") { setuid(configuration.uid) }

        let arguments = configuration.execArguments(startTimeMicroseconds: startTime, startCPUTimeMicroseconds: startCPUTime,
                                                    parentCPUTimeMicroseconds: parentCPUTime)
        let argv = arguments.map { strdup($0) } + [nil]
        var environment: [UnsafeMutablePointer<CChar>?] = [nil]
        _ = try Self.step("exec /\(configuration.execFileName)") { execve(arguments[0], argv, &environment) }
        // execve returns only on failure, which `step` has thrown.
        _exit(127)
    }

    /// A new mount namespace whose root is the jail: pivot_root rather than
    /// chroot alone, so the old root is unmounted and unreachable.
    func pivotIntoJail(_ root: String) throws(JailerError) {
        _ = try Self.step("unshare(CLONE_NEWNS)") { ckvm_unshare(CKVM_CLONE_NEWNS) }
        // Nothing done in the jail's mounts may propagate back to the host.
        _ = try Self.step("making / private in the new mount namespace") { mount(nil, "/", nil, CKVM_MS_PRIVATE | CKVM_MS_REC, nil) }
        _ = try Self.step("bind-mounting \(root) on itself") { mount(root, root, nil, CKVM_MS_BIND | CKVM_MS_REC, nil) }
        _ = try Self.step("chdir \(root)") { chdir(root) }
        _ = try? systemCall("rmdir old_root") { rmdir("old_root") }  // a leftover
        _ = try Self.step("mkdir \(root)/old_root") { mkdir("old_root", 0o700) }
        _ = try Self.step("pivot_root into \(root)") { ckvm_pivot_root(".", "old_root") }
        _ = try Self.step("unmounting the old root") { umount2("old_root", CKVM_MNT_DETACH) }
        _ = try Self.step("removing /old_root") { rmdir("old_root") }
        _ = try Self.step("chroot .") { chroot(".") }
        _ = try Self.step("chdir /") { chdir("/") }
    }

    /// A Swift program reads its own command line from /proc/self/cmdline
    /// (a static binary also finds itself through /proc/self/exe): without a
    /// /proc, swiftlet-vmm would see no arguments. So the jail gets a procfs
    /// of its own, mounted after the PID-namespace fork (it then lists only
    /// that namespace): read-only, no setuid/devices/exec, only the process
    /// directories (subset=pid: no /proc/sys, /proc/kcore, ...) and only
    /// those of the reader's own uid (hidepid=invisible).
    func mountProc() throws(JailerError) {
        _ = try? systemCall("rmdir /proc") { rmdir("/proc") }  // a leftover
        _ = try Self.step("mkdir /proc in the jail") { mkdir("/proc", 0o555) }
        let flags = UInt(MS_RDONLY) | UInt(MS_NOSUID) | UInt(MS_NODEV) | UInt(MS_NOEXEC)
        _ = try Self.step("mounting /proc (hidepid=invisible,subset=pid) in the jail") {
            mount("proc", "/proc", "proc", flags, "hidepid=invisible,subset=pid")
        }
    }

    /// /dev/kvm, /dev/net/tun and /dev/urandom only, owned by uid:gid, and
    /// /dev/userfaultfd when the host has one (`userfaultfdMinor`), as
    /// Firecracker's jailer: a VMM that dropped root needs it for a snapshot
    /// load with the Uffd backend (the userfaultfd syscall refuses it).
    func createDeviceNodes(userfaultfdMinor: UInt32? = nil) throws(JailerError) {
        try Self.createDirectories("/dev/net")
        let userfaultfd = userfaultfdMinor.map { [("/dev/userfaultfd", Self.userfaultfdMajor, $0)] } ?? []
        for (path, major, minor) in Self.deviceNodes + userfaultfd {
            _ = try? systemCall("unlink \(path)") { unlink(path) }  // a leftover node from an earlier run with this id
            _ = try Self.step("mknod \(path)") { mknod(path, S_IFCHR | 0o600, ckvm_makedev(major, minor)) }
            _ = try Self.step("chown \(path)") { chown(path, configuration.uid, configuration.gid) }
        }
    }
}
