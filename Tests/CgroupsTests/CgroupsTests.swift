import Foundation
import Testing
@testable import Cgroups

/// A plain directory laid out like /sys/fs/cgroup.
struct FakeCgroupRoot: ~Copyable {
    let path = NSTemporaryDirectory() + "swiftlet-cgroups-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    /// This host's layout: v1 controllers each in their own hierarchy, cgroup2 at unified/ without controllers.
    static func hybrid() throws -> FakeCgroupRoot {
        let root = FakeCgroupRoot()
        for controller in ["cpu", "cpuacct", "cpuset", "memory"] {
            try FileManager.default.createDirectory(atPath: root.path + "/" + controller, withIntermediateDirectories: true)
            try "".write(toFile: root.path + "/\(controller)/tasks", atomically: true, encoding: .utf8)
        }
        try "0-1\n".write(toFile: root.path + "/cpuset/cpuset.cpus", atomically: true, encoding: .utf8)
        try "0\n".write(toFile: root.path + "/cpuset/cpuset.mems", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: root.path + "/unified", withIntermediateDirectories: true)
        try "\n".write(toFile: root.path + "/unified/cgroup.controllers", atomically: true, encoding: .utf8)
        return root
    }

    static func unified() throws -> FakeCgroupRoot {
        let root = FakeCgroupRoot()
        try FileManager.default.createDirectory(atPath: root.path, withIntermediateDirectories: true)
        try "cpuset cpu io memory pids\n".write(toFile: root.path + "/cgroup.controllers", atomically: true, encoding: .utf8)
        return root
    }

    func read(_ relative: String) throws -> String { try String(contentsOfFile: path + "/" + relative, encoding: .utf8) }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

@Suite("cgroup hierarchies")
struct CgroupHierarchyTests {
    @Test("on a hybrid host each controller is found in its v1 hierarchy, even with cgroup2 mounted")
    func hybridDetection() throws {
        let root = try FakeCgroupRoot.hybrid()
        let hierarchies = CgroupHierarchies(root: root.path)
        #expect(hierarchies.unified == root.path + "/unified")
        #expect(hierarchies.version(of: "cpu") == .v1)
        #expect(hierarchies.version(of: "memory") == .v1)
        #expect(hierarchies.version(of: "io") == nil)
        #expect(hierarchies.version(of: "..") == nil)
    }

    @Test("a unified hierarchy offering a controller serves it as v2")
    func unifiedDetection() throws {
        let root = try FakeCgroupRoot.unified()
        let hierarchies = CgroupHierarchies(root: root.path)
        #expect(hierarchies.version(of: "cpu") == .v2)
        #expect(hierarchies.version(of: "memory") == .v2)
    }

    @Test("--cgroup values parse as <controller>.<file>=<value>, and nothing else does", arguments: [
        ("cpu.shares=100", true), ("memory.limit_in_bytes=1048576", true), ("cpuset.cpus=0-1", true),
        ("cpu.shares", false), ("=1", false), ("cpu=1", false), ("cpu.=1", false), ("../x.y=1", false),
        ("cpu.shares=", false), ("cpu/x.y=1", false), ("cpu.x/y=1", false), ("CPU.shares=1", false),
    ])
    func settingParsing(text: String, valid: Bool) {
        let parsed = try? CgroupSetting(parsing: text)
        #expect((parsed != nil) == valid, "\(text)")
    }
}

@Suite("cgroup limits and placement")
struct CgroupPlacementTests {
    @Test("VM limits become cfs quota and memory.limit_in_bytes on v1 hierarchies, and the pid joins both groups")
    func vmLimitsV1() throws {
        let root = try FakeCgroupRoot.hybrid()
        let groups = VMCgroups(root: root.path)
        #expect(groups.warning == nil)
        #expect(groups.cpuVersion == .v1 && groups.memoryVersion == .v1)
        let placed = try groups.place(pid: 4242, name: "web", cpuPercent: 20, memoryMiB: 96)
        #expect(placed == [root.path + "/cpu/swiftlet/web", root.path + "/memory/swiftlet/web"])
        #expect(try root.read("cpu/swiftlet/web/cpu.cfs_quota_us") == "20000")
        #expect(try root.read("cpu/swiftlet/web/cpu.cfs_period_us") == "100000")
        #expect(try root.read("memory/swiftlet/web/memory.limit_in_bytes") == String(96 << 20))
        #expect(try root.read("cpu/swiftlet/web/cgroup.procs") == "4242")
        #expect(try root.read("memory/swiftlet/web/cgroup.procs") == "4242")
    }

    @Test("no limit writes -1 on v1 and max on v2")
    func noLimits() throws {
        let settings1 = VMCgroups.settings(version: .v1, cpuPercent: nil, memoryMiB: nil)
        #expect(settings1.cpu.last == CgroupSetting(file: "cpu.cfs_quota_us", value: "-1"))
        #expect(settings1.memory == [CgroupSetting(file: "memory.limit_in_bytes", value: "-1")])
        let settings2 = VMCgroups.settings(version: .v2, cpuPercent: 150, memoryMiB: nil)
        #expect(settings2.cpu == [CgroupSetting(file: "cpu.max", value: "150000 100000")])
        #expect(settings2.memory == [CgroupSetting(file: "memory.max", value: "max")])
    }

    @Test("jailer settings on v1 go to <controller>/<parent>/<id>, cpuset inherits cpus and mems")
    func jailerV1() throws {
        let root = try FakeCgroupRoot.hybrid()
        let settings = try ["cpu.shares=100", "cpuset.mems=0", "memory.limit_in_bytes=1048576"].map { try CgroupSetting(parsing: $0) }
        let groups = try CgroupFiles.apply(settings, version: .v1, hierarchies: CgroupHierarchies(root: root.path),
                                           parent: "swiftlet-vmm", id: "vm-1", pid: 77)
        #expect(groups.count == 3)
        #expect(try root.read("cpu/swiftlet-vmm/vm-1/cpu.shares") == "100")
        #expect(try root.read("cpuset/swiftlet-vmm/vm-1/cpuset.cpus") == "0-1")
        #expect(try root.read("memory/swiftlet-vmm/vm-1/cgroup.procs") == "77")
    }

    @Test("jailer settings on v2 go to the unified <parent>/<id> with the controllers enabled above it")
    func jailerV2() throws {
        let root = try FakeCgroupRoot.unified()
        let settings = try ["cpu.max=20000 100000", "memory.max=1048576"].map { try CgroupSetting(parsing: $0) }
        let groups = try CgroupFiles.apply(settings, version: .v2, hierarchies: CgroupHierarchies(root: root.path),
                                           parent: "swiftlet-vmm", id: "vm-1", pid: 77)
        #expect(groups == [root.path + "/swiftlet-vmm/vm-1"])
        #expect(try root.read("swiftlet-vmm/cgroup.subtree_control") == "+cpu +memory")
        #expect(try root.read("swiftlet-vmm/vm-1/cpu.max") == "20000 100000")
    }

    @Test("a controller missing from the requested version is one clear error")
    func missingController() throws {
        let root = try FakeCgroupRoot.hybrid()
        #expect(throws: CgroupError.controllerUnavailable(controller: "cpu", version: .v2, root: root.path)) {
            try CgroupFiles.apply([CgroupSetting(file: "cpu.max", value: "max")], version: .v2,
                                  hierarchies: CgroupHierarchies(root: root.path), parent: "p", id: "i", pid: 1)
        }
    }
}
