import Cgroups
import Foundation
import Testing

@Suite("swiftlet-jailer", .serialized, .enabled(if: JailHost.shouldRun, JailHost.skipReason))
struct JailerProcessTests {
    @Test("a kit guest boots under swiftlet-jailer: chroot, uid/gid, new PID and mount namespaces, cgroup, device nodes, empty environment")
    func jailedVMM() throws {
        let base = NSTemporaryDirectory() + "swiftlet-jail-\(getpid())"
        let id = "itest-\(getpid())"
        let jail = base + "/swiftlet-vmm/" + id + "/root"
        try FileManager.default.createDirectory(atPath: jail, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        // What a Firecracker user does: put the VM's files into the jail first.
        try FileManager.default.copyItem(atPath: try KitGuest.program("idle"), toPath: jail + "/idle.elf")

        let hierarchies = CgroupHierarchies(root: "/sys/fs/cgroup")
        let cgroupVersion = try #require(hierarchies.version(of: "cpu"), "no cpu controller on this host")
        let setting = cgroupVersion == .v1 ? "cpu.shares=512" : "cpu.weight=50"
        // swiftletd runs the jailer with umask 077: the jail's /dev and /proc must still be usable by the VMM's user.
        let callerUmask = umask(0o077)
        defer { umask(callerUmask) }
        let result = try JailHost.runJailer([
            "--id", id, "--exec-file", ProcessTests.binary("swiftlet-vmm"), "--uid", String(JailHost.uid), "--gid", String(JailHost.gid),
            "--chroot-base-dir", base, "--new-pid-ns", "--cgroup", setting, "--cgroup-version", String(cgroupVersion.rawValue),
            "--resource-limit", "no-file=256", "--", "--kernel", "/idle.elf", "--serial", "file:/console.log", "--api-sock", "/api.sock",
        ])
        // With --new-pid-ns the jailer exits once the VMM is forked, leaving its pid in the jail.
        #expect(result.status == 0, "stderr: \(result.stderr)")
        let pid = try #require(Int32(JailHost.text(jail + "/swiftlet-vmm.pid").trimmingCharacters(in: .whitespacesAndNewlines)),
                               "no pid file; jailer stderr: \(result.stderr)")
        let cgroupDirectory = (cgroupVersion == .v1 ? hierarchies.v1Directory(of: "cpu") ?? "" : hierarchies.unified ?? "") + "/swiftlet-vmm/" + id
        defer {
            JailHost.killAndReap(pid)
            _ = rmdir(cgroupDirectory)
        }
        #expect(JailHost.wait(seconds: 30) { JailHost.text(jail + "/console.log").contains("KIT idle tick 2") },
                "console: \(JailHost.text(jail + "/console.log"))")

        // Its root is the jail (the same directory: device and inode), holding only what the jail holds.
        var rootStatus = stat(), jailStatus = stat()
        #expect(stat("/proc/\(pid)/root/", &rootStatus) == 0 && stat(jail, &jailStatus) == 0)
        #expect(rootStatus.st_dev == jailStatus.st_dev && rootStatus.st_ino == jailStatus.st_ino)
        let visible = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/root/").sorted()
        #expect(visible == ["api.sock", "console.log", "dev", "idle.elf", "proc", "swiftlet-vmm", "swiftlet-vmm.pid"])
        let status = JailHost.text("/proc/\(pid)/status")
        #expect(status.contains("Uid:\t\(JailHost.uid)\t\(JailHost.uid)\t\(JailHost.uid)\t\(JailHost.uid)"), "\(status)")
        #expect(status.contains("Gid:\t\(JailHost.gid)\t\(JailHost.gid)\t\(JailHost.gid)\t\(JailHost.gid)"), "\(status)")
        #expect(status.contains("Umask:\t0077"), "the caller's umask is not restored for the VMM: \(status)")
        let groups = status.split(separator: "\n").first { $0.hasPrefix("Groups:") }?.dropFirst(7).trimmingCharacters(in: .whitespaces)
        #expect(groups == "", "supplementary groups kept: \(status)")
        // Its own PID namespace, where it is init.
        let namespacePIDs = status.split(separator: "\n").first { $0.hasPrefix("NSpid:") }?.split(whereSeparator: \.isWhitespace) ?? []
        #expect(namespacePIDs.last == "1", "\(namespacePIDs)")
        for namespace in ["pid", "mnt"] {
            let theirs = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/\(namespace)")
            let ours = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(namespace)")
            #expect(theirs != ours, "\(namespace) namespace shared with the host")
        }
        let cgroups = JailHost.text("/proc/\(pid)/cgroup")
        #expect(cgroups.contains("/swiftlet-vmm/\(id)\n"), "\(cgroups)")
        #expect(JailHost.text(cgroupDirectory + "/" + setting.prefix { $0 != "=" }).hasPrefix(String(setting.split(separator: "=")[1])))
        #expect(JailHost.text("/proc/\(pid)/environ").isEmpty)
        // Its /proc lists only its own PID namespace, and no /proc/sys.
        let procMount = JailHost.text("/proc/\(pid)/mountinfo").split(separator: "\n").first { $0.contains(" /proc ") } ?? ""
        #expect(procMount.contains("ro,") && procMount.contains("subset=pid"), "\(procMount)")
        // The VMM (uid \(JailHost.uid)) could create its API socket in the jail root it was given.
        #expect(FileManager.default.fileExists(atPath: jail + "/api.sock"))
        #expect(JailHost.text("/proc/\(pid)/limits").contains("Max open files            256                  256"))
        // Only the three device nodes, and /dev/userfaultfd where the host
        // has it (as Firecracker's jailer), owned by the VMM's user.
        let devices = try FileManager.default.subpathsOfDirectory(atPath: jail + "/dev").sorted()
        let hostUserfaultfd = JailHost.text("/proc/misc").split(separator: "\n").contains { $0.hasSuffix(" userfaultfd") }
        #expect(devices == ["kvm", "net", "net/tun", "urandom"] + (hostUserfaultfd ? ["userfaultfd"] : []))
        if hostUserfaultfd {
            let userfaultfd = try FileManager.default.attributesOfItem(atPath: jail + "/dev/userfaultfd")
            #expect((userfaultfd[.ownerAccountID] as? NSNumber)?.uint32Value == JailHost.uid)
        }
        let kvm = try FileManager.default.attributesOfItem(atPath: jail + "/dev/kvm")
        #expect((kvm[.ownerAccountID] as? NSNumber)?.uint32Value == JailHost.uid)
        // The old root is gone from its mount namespace: it sees only the jail.
        #expect(!JailHost.text("/proc/\(pid)/mountinfo").contains("old_root"))
    }

    @Test("--netns puts the VMM in that network namespace; --daemonize detaches it (new session, stdio on /dev/null)")
    func networkNamespaceAndDaemonize() throws {
        let namespace = "swiftlet-jail-\(getpid())"
        let ip = Process()
        ip.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        ip.arguments = ["netns", "add", namespace]
        try ip.run()
        ip.waitUntilExit()
        try #require(ip.terminationStatus == 0, "ip netns add failed")
        defer {
            let delete = Process()
            delete.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            delete.arguments = ["netns", "delete", namespace]
            try? delete.run()
            delete.waitUntilExit()
        }
        let base = NSTemporaryDirectory() + "swiftlet-jail-ns-\(getpid())"
        let id = "netns-\(getpid())"
        let jail = base + "/swiftlet-vmm/" + id + "/root"
        try FileManager.default.createDirectory(atPath: jail, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        try FileManager.default.copyItem(atPath: try KitGuest.program("idle"), toPath: jail + "/idle.elf")
        let result = try JailHost.runJailer([
            "--id", id, "--exec-file", ProcessTests.binary("swiftlet-vmm"), "--uid", String(JailHost.uid), "--gid", String(JailHost.gid),
            "--chroot-base-dir", base, "--netns", "/var/run/netns/" + namespace, "--daemonize", "--new-pid-ns",
            "--", "--kernel", "/idle.elf", "--serial", "file:/console.log", "--api-sock", "/api.sock",
        ])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        let pid = try #require(Int32(JailHost.text(jail + "/swiftlet-vmm.pid").trimmingCharacters(in: .whitespacesAndNewlines)),
                               "no pid file; jailer stderr: \(result.stderr)")
        defer { JailHost.killAndReap(pid) }
        #expect(JailHost.wait(seconds: 30) { JailHost.text(jail + "/console.log").contains("KIT idle tick 2") })
        var theirs = stat(), wanted = stat()
        #expect(stat("/proc/\(pid)/ns/net", &theirs) == 0 && stat("/var/run/netns/" + namespace, &wanted) == 0)
        #expect(theirs.st_ino == wanted.st_ino, "the VMM is not in the network namespace it was given")
        for fd in 0...2 {
            #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) == "/dev/null")
        }
        // Its session is the one the jailer made with setsid, not the test's.
        let fields = JailHost.text("/proc/\(pid)/stat").split(separator: ")").last?.split(separator: " ") ?? []
        #expect(fields.count > 4 && fields[3] != String(getsid(0)), "\(fields)")
    }

    @Test("an --exec-file that is not a regular file is refused with one line before anything is created")
    func refusesDirectoryExecFile() throws {
        let base = NSTemporaryDirectory() + "swiftlet-jail-dir-\(getpid())"
        let fake = NSTemporaryDirectory() + "swiftlet-vmm-dir-\(getpid())"
        try FileManager.default.createDirectory(atPath: fake, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: fake) }
        let result = try ProcessTests.run("swiftlet-jailer", [
            "--id", "x", "--exec-file", fake, "--uid", "1", "--gid", "1", "--chroot-base-dir", base,
        ])
        #expect(result.status == 1)
        #expect(result.stderr == "swiftlet-jailer: --exec-file '\(fake)' is invalid: not a regular file; give the VMM binary\n")
        #expect(!FileManager.default.fileExists(atPath: base))
    }

    @Test("a bad --id is refused with one line before anything is created")
    func refusesBadID() throws {
        let base = NSTemporaryDirectory() + "swiftlet-jail-bad-\(getpid())"
        let result = try ProcessTests.run("swiftlet-jailer", [
            "--id", "../x", "--exec-file", ProcessTests.binary("swiftlet-vmm"), "--uid", "1", "--gid", "1", "--chroot-base-dir", base,
        ])
        #expect(result.status == 1)
        #expect(result.stderr == "swiftlet-jailer: --id '../x' is invalid: use 1 to 64 letters, digits and '-'\n")
        #expect(!FileManager.default.fileExists(atPath: base))
    }
}
