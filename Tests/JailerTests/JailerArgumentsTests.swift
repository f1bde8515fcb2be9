import Testing
import Cgroups
@testable import Jailer

@Suite("jailer arguments")
struct JailerArgumentsTests {
    static let minimal = ["--id", "vm-1", "--exec-file", "/usr/bin/swiftlet-vmm", "--uid", "1000", "--gid", "1001"]

    @Test("the minimal command line gets Firecracker's defaults")
    func defaults() throws {
        let configuration = try JailerArguments.parse(Self.minimal)
        #expect(configuration.chrootBase == "/srv/jailer")
        #expect(configuration.cgroupVersion == .v1)
        #expect(configuration.cgroupParent == "swiftlet-vmm")
        #expect(!configuration.daemonize && !configuration.newPIDNamespace)
        #expect(configuration.effectiveResourceLimits.map(\.0) == [.openFiles])
        #expect(configuration.effectiveResourceLimits.map(\.1) == [2048])
    }

    @Test("the jail is <chroot_base>/<exec_file_name>/<id>/root and the exec file sits at its top")
    func layout() throws {
        let configuration = try JailerArguments.parse(Self.minimal + ["--chroot-base-dir", "/var/jail/"])
        #expect(configuration.jailDirectory == "/var/jail/swiftlet-vmm/vm-1")
        #expect(configuration.chrootDirectory == "/var/jail/swiftlet-vmm/vm-1/root")
        #expect(configuration.pidFileName == "swiftlet-vmm.pid")
        let arguments = configuration.execArguments(startTimeMicroseconds: 5, startCPUTimeMicroseconds: 6, parentCPUTimeMicroseconds: nil)
        #expect(arguments == ["/swiftlet-vmm", "--id=vm-1", "--start-time-us=5", "--start-time-cpu-us=6"])
    }

    @Test("every flag is understood, repeatable ones accumulate, and '--' passes the rest on")
    func allFlags() throws {
        let configuration = try JailerArguments.parse(Self.minimal + [
            "--netns", "/var/run/netns/a", "--cgroup", "cpu.shares=100", "--cgroup=memory.limit_in_bytes=1048576",
            "--cgroup-version", "2", "--parent-cgroup", "swiftlet/vms", "--daemonize", "--new-pid-ns",
            "--resource-limit", "fsize=1000", "--resource-limit", "no-file=64", "--", "--api-sock", "/api.sock", "--", "x",
        ])
        #expect(configuration.networkNamespace == "/var/run/netns/a")
        #expect(configuration.cgroups == [CgroupSetting(file: "cpu.shares", value: "100"), CgroupSetting(file: "memory.limit_in_bytes", value: "1048576")])
        #expect(configuration.cgroupVersion == .v2)
        #expect(configuration.cgroupParent == "swiftlet/vms")
        #expect(configuration.daemonize && configuration.newPIDNamespace)
        #expect(configuration.effectiveResourceLimits.map(\.1) == [1000, 64])
        #expect(configuration.extraArguments == ["--api-sock", "/api.sock", "--", "x"])
        let arguments = configuration.execArguments(startTimeMicroseconds: 1, startCPUTimeMicroseconds: 2, parentCPUTimeMicroseconds: 3)
        #expect(arguments.suffix(5) == ["--parent-cpu-time-us=3", "--api-sock", "/api.sock", "--", "x"])
    }

    @Test("bad values are refused with one line naming the value and what is valid", arguments: [
        (["--id", "a/b"], "--id 'a/b' is invalid"),
        (["--id", String(repeating: "a", count: 65)], "1 to 64"),
        (["--id", ""], "--id '' is invalid"),
        (["--exec-file", "/bin/sh"], "must contain 'firecracker' or 'swiftlet-vmm'"),
        (["--uid", "-1"], "--uid '-1' is invalid"),
        (["--gid", "root"], "--gid 'root' is invalid"),
        (["--cgroup-version", "3"], "use 1 or 2"),
        (["--cgroup", "cpu.shares"], "expected <controller>.<file>=<value>"),
        (["--cgroup", "../../x.y=1"], "expected <controller>.<file>=<value>"),
        (["--parent-cgroup", "../escape"], "--parent-cgroup '../escape' is invalid"),
        (["--parent-cgroup", "/abs"], "--parent-cgroup '/abs' is invalid"),
        (["--chroot-base-dir", "relative"], "absolute path"),
        (["--resource-limit", "cpu=1"], "use fsize=<bytes> or no-file=<count>"),
        (["--frobnicate"], "unknown option --frobnicate"),
        (["--daemonize=yes"], "takes no value"),
    ] as [([String], String)])
    func refusals(override: [String], message: String) {
        // Replace the flag in the minimal line when it is one of the four required ones.
        var arguments = Self.minimal
        if let index = arguments.firstIndex(of: override[0]) {
            arguments.replaceSubrange(index...index + 1, with: override)
        } else {
            arguments += override
        }
        do {
            _ = try JailerArguments.parse(arguments)
            Issue.record("accepted \(arguments)")
        } catch {
            #expect(error.description.contains(message), "\(error)")
            #expect(!error.description.contains("\n") || error.description.hasPrefix("unknown") || error.description.hasPrefix("missing"))
        }
    }

    @Test("each required flag is named when missing", arguments: ["--id", "--exec-file", "--uid", "--gid"])
    func missing(flag: String) {
        var arguments = Self.minimal
        if let index = arguments.firstIndex(of: flag) { arguments.removeSubrange(index...index + 1) }
        #expect(throws: JailerError.self) { try JailerArguments.parse(arguments) }
        #expect((try? JailerArguments.parse(arguments)) == nil)
        do { _ = try JailerArguments.parse(arguments) } catch { #expect(error.description.hasPrefix("missing \(flag)")) }
    }

    @Test("Firecracker's own binary name is accepted")
    func firecrackerName() throws {
        var arguments = Self.minimal
        arguments[3] = "/usr/local/bin/firecracker-v1.10"
        #expect(try JailerArguments.parse(arguments).chrootDirectory == "/srv/jailer/firecracker-v1.10/vm-1/root")
    }
}
