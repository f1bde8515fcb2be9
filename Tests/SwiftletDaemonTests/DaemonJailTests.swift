import Foundation
import SwiftletClient
@testable import SwiftletDaemon
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// swiftletd's VMMs run under swiftlet-jailer unless --no-jail (needs root).
@Suite("swiftletd jails its VMs", .serialized,
       .enabled(if: TestEnvironment.guestsRun && (geteuid() == 0 || TestEnvironment.isCI), "needs root and /dev/kvm; set CI=true to make this a failure"))
struct DaemonJailTests {
    static func inode(_ path: String) -> (dev_t, ino_t)? {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        return (status.st_dev, status.st_ino)
    }

    static func statusLine(_ pid: pid_t, _ key: String) -> String {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").first { $0.hasPrefix(key + ":") }.map(String.init) ?? ""
    }

    @Test("by default a VM's VMM runs in its own jail as the jail user, with a copy of its kernel and a hard link to its disk", .timeLimit(.minutes(2)))
    func jailedByDefault() throws {
        let daemon = try DaemonHarness(label: "jail")
        defer { daemon.tearDown() }
        // In the image folder swiftletd allows, on the jail's file system.
        try FileManager.default.createDirectory(atPath: daemon.imagesDirectory, withIntermediateDirectories: true)
        let disk = daemon.imagesDirectory + "/data.img"
        FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
        var definition = try daemon.definition("web.1")
        definition.disks = [.init(path: disk)]
        _ = try daemon.client.define(definition)
        _ = try daemon.client.action("web.1", "start")
        let info = try daemon.wait(for: "web.1", state: .running)
        let pid = try #require(info.pid, "not running: \(info.reason ?? "") \(daemon.log())")
        #expect(try daemon.consoleContains("web.1", "KIT halt ready"))

        // The name has a '.', which jail ids cannot hold: the jail is web-1-<hash>.
        let jails = daemon.stateDirectory + "/jail/swiftlet-vmm"
        let ids = try FileManager.default.contentsOfDirectory(atPath: jails)
        #expect(ids.count == 1 && ids[0].hasPrefix("web-1-"), "\(ids)")
        let root = jails + "/" + (ids.first ?? "") + "/root"
        let processRoot = try #require(Self.inode("/proc/\(pid)/root/"))
        let jailRoot = try #require(Self.inode(root))
        #expect(processRoot == jailRoot, "the VMM's root is not its jail")
        #expect(Self.statusLine(pid, "Uid") == "Uid:\t64064\t64064\t64064\t64064")
        let visible = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/root/").sorted()
        // vsock.sock: the guest agent's way in (docs/agent.md).
        #expect(visible == ["api.sock", "dev", "disk0", "kernel", "proc", "swiftlet-vmm", "vsock.sock"])
        // The disk is the same file (guest writes reach the image), not a copy.
        #expect(Self.inode(root + "/disk0") ?? (0, 0) == Self.inode(disk) ?? (1, 1))
        // The daemon still reaches the VMM's API (through the jail's socket).
        #expect(try daemon.client.action("web.1", "pause").state == .paused)

        _ = try daemon.client.action("web.1", "destroy")
        #expect(try daemon.wait(for: "web.1", state: .shutOff).state == .shutOff)
        // Removed right after the state changes (bounded wait).
        let jail = jails + "/" + (ids.first ?? "")
        let deadline = Date().addingTimeInterval(10)
        while FileManager.default.fileExists(atPath: jail) && Date() < deadline { usleep(20_000) }
        #expect(!FileManager.default.fileExists(atPath: jail), "the jail is left behind")
        #expect(FileManager.default.fileExists(atPath: disk), "removing the jail removed the image")
    }

    @Test("with --no-jail the VMM runs unjailed, as the daemon's user", .timeLimit(.minutes(2)))
    func noJail() throws {
        let daemon = try DaemonHarness(label: "nojail", extraArguments: ["--no-jail"])
        defer { daemon.tearDown() }
        _ = try daemon.client.define(try daemon.definition("plain"))
        _ = try daemon.client.action("plain", "start")
        let pid = try #require(try daemon.wait(for: "plain", state: .running).pid)
        #expect(Self.inode("/proc/\(pid)/root/") ?? (0, 0) == Self.inode("/") ?? (1, 1))
        #expect(Self.statusLine(pid, "Uid").hasPrefix("Uid:\t\(geteuid())\t"))
        #expect(!FileManager.default.fileExists(atPath: daemon.stateDirectory + "/jail"))
    }
}

@Suite("jail ids and the jailer command line")
struct VMJailUnitTests {
    @Test("plain names are their own jail id; names with '.' or '_' get '-' and a hash, distinct and at most 64 bytes", arguments: [
        ("web", "web"), ("Web-01", "Web-01"),
    ])
    func plainIDs(name: String, id: String) {
        #expect(VMJail.jailID(for: name) == id)
    }

    @Test("ids of names the jailer would refuse are valid and never collide")
    func mappedIDs() {
        let names = ["a.b", "a_b", "a-b", String(repeating: "x.", count: 32)]
        let ids = names.map(VMJail.jailID(for:))
        #expect(Set(ids).count == ids.count, "\(ids)")
        for id in ids {
            #expect((1...64).contains(id.utf8.count))
            #expect(id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }, "\(id)")
        }
    }

    @Test("the jailer gets Firecracker's flags, then '--' and the VMM's arguments")
    func jailerArguments() {
        let jail = VMJail(configuration: JailConfiguration(jailerBinary: "/j", chrootBase: "/s/jail", uid: 5, gid: 6),
                          name: "vm", vmmBinary: "/usr/bin/swiftlet-vmm")
        #expect(jail.root == "/s/jail/swiftlet-vmm/vm/root")
        #expect(jail.jailerArguments(vmmArguments: ["--kernel", "/kernel"]) == [
            "--id", "vm", "--exec-file", "/usr/bin/swiftlet-vmm", "--uid", "5", "--gid", "6", "--chroot-base-dir", "/s/jail", "--", "--kernel", "/kernel",
        ])
    }
}
