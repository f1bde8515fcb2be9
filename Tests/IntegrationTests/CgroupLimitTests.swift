import Cgroups
import Foundation
import Testing

/// Helpers for tests on this host's real cgroup hierarchies and for
/// swiftlet-jailer: both need root (cgroupfs writes; namespaces, mknod) and /dev/kvm.
enum JailHost {
    static var isRoot: Bool { getuid() == 0 }
    static var shouldRun: Bool { KitGuest.shouldRun && (isRoot || KitGuest.isCI) }
    static let skipReason: Comment = "needs root (namespaces, mknod, cgroupfs) and /dev/kvm; set CI=true to make this a failure"
    /// An unprivileged uid/gid for the jailed VMM.
    static let uid: UInt32 = 1042
    static let gid: UInt32 = 1043

    static func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    /// Polls (bounded) until `condition` holds.
    static func wait(seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(50_000)
        }
        return condition()
    }

    /// user + system CPU seconds of `pid`, from /proc/<pid>/stat.
    static func cpuSeconds(_ pid: Int32) -> Double? {
        let stat = text("/proc/\(pid)/stat")
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    static func killAndReap(_ pid: Int32) {
        kill(pid, SIGKILL)
        _ = wait(seconds: 10) { kill(pid, 0) != 0 }
    }

    /// Runs swiftlet-jailer with its output in files, not pipes: with
    /// --new-pid-ns the jailed VMM inherits them and outlives the jailer.
    /// Spawned directly (not through Foundation's Process, which makes its
    /// child a process group leader, where `--daemonize`'s setsid fails as
    /// Firecracker's does) with an empty signal mask.
    static func runJailer(_ arguments: [String]) throws -> (status: Int32, stderr: String) {
        let errors = NSTemporaryDirectory() + "swiftlet-jailer-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).err"
        defer { try? FileManager.default.removeItem(atPath: errors) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, errors, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        let binary = ProcessTests.binary("swiftlet-jailer")
        let argv = ([binary] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, binary, &actions, &attributes, argv, environ)
        guard result == 0 else { throw KitGuest.KitError(message: "cannot start swiftlet-jailer: \(String(cString: strerror(result)))") }
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (code, text(errors))
    }

    /// Starts swiftlet-vmm with `arguments` through a shell that waits for a
    /// line on stdin before exec: the test places the pid in a cgroup first,
    /// so everything the VMM does is charged there (as the daemon's jailed
    /// spawn does before the guest runs).
    static func startHeld(_ arguments: [String]) throws -> (Process, Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "read line; exec \"$0\" \"$@\"", ProcessTests.binary("swiftlet-vmm")] + arguments
        let input = Pipe()
        process.standardInput = input
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return (process, input)
    }
}

@Suite("cgroup limits on this host", .serialized, .enabled(if: JailHost.shouldRun, JailHost.skipReason))
struct CgroupLimitTests {
    @Test("a VM whose guest touches its 256 MiB of RAM under a 48 MiB memory limit is stopped by the kernel at the limit")
    func memoryLimit() throws {
        let cgroups = VMCgroups(root: "/sys/fs/cgroup")
        try #require(cgroups.memoryVersion != nil, "\(cgroups.warning ?? "")")
        let name = "itest-memory-\(getpid())"
        let (process, input) = try JailHost.startHeld(["--kernel", try KitGuest.program("memtouch"), "--memory", "256M", "--serial", "none"])
        defer {
            if process.isRunning { process.terminate(); process.waitUntilExit() }
            cgroups.remove(name: name)
        }
        let groups = try cgroups.place(pid: process.processIdentifier, name: name, cpuPercent: nil, memoryMiB: 48)
        let group = try #require(cgroups.group(of: name, controller: "memory"))
        #expect(groups.contains(group))
        input.fileHandleForWriting.write(Data("go\n".utf8))
        #expect(JailHost.wait(seconds: 120) { !process.isRunning })
        process.waitUntilExit()
        // Without swap (as here) the kernel's OOM killer ends the VMM at the limit;
        // with swap the excess is swapped out, which the counters below still show.
        let hasSwap = JailHost.text("/proc/swaps").split(separator: "\n").count > 1
        if !hasSwap {
            #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGKILL,
                    "status \(process.terminationStatus), reason \(process.terminationReason.rawValue)")
        }
        if cgroups.memoryVersion == .v1 {
            #expect((Int(JailHost.text(group + "/memory.failcnt").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) > 0)
            let peak = Int(JailHost.text(group + "/memory.max_usage_in_bytes").trimmingCharacters(in: .whitespacesAndNewlines)) ?? .max
            #expect(peak <= 48 << 20)
        } else {
            #expect(JailHost.text(group + "/memory.events").contains("oom_kill 1"))
        }
    }

    @Test("a busy guest's VMM under a 20% CPU limit uses well under 40% of a CPU and is throttled")
    func cpuLimit() throws {
        let cgroups = VMCgroups(root: "/sys/fs/cgroup")
        try #require(cgroups.cpuVersion != nil, "\(cgroups.warning ?? "")")
        let name = "itest-cpu-\(getpid())"
        let console = NSTemporaryDirectory() + "swiftlet-cpu-limit-\(getpid()).log"
        defer { try? FileManager.default.removeItem(atPath: console) }
        // idle spins on the TSC between ticks: one vCPU always busy.
        let (process, input) = try JailHost.startHeld(["--kernel", try KitGuest.program("idle"), "--serial", "file:\(console)"])
        defer {
            if process.isRunning { process.terminate(); process.waitUntilExit() }
            cgroups.remove(name: name)
        }
        let pid = process.processIdentifier
        try cgroups.place(pid: pid, name: name, cpuPercent: 20, memoryMiB: nil)
        let group = try #require(cgroups.group(of: name, controller: "cpu"))
        input.fileHandleForWriting.write(Data("go\n".utf8))
        #expect(JailHost.wait(seconds: 30) { JailHost.text(console).contains("KIT idle tick") })

        let startCPU = try #require(JailHost.cpuSeconds(pid))
        let startWall = Date()
        usleep(4_000_000)
        let usedCPU = try #require(JailHost.cpuSeconds(pid)) - startCPU
        let share = usedCPU / Date().timeIntervalSince(startWall)
        #expect(share < 0.4, "the VMM used \(Int(share * 100))% of a CPU under a 20% limit")
        let statistics = JailHost.text(group + "/cpu.stat")
        let throttled = statistics.split(separator: "\n").first { $0.hasPrefix("nr_throttled ") }.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
        #expect(throttled > 0, "cpu.stat: \(statistics)")
    }
}
