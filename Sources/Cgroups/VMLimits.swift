import Glibc
import HostSystem

/// Per-VM CPU and memory limits in groups named `swiftlet/<vm>`, on
/// whichever hierarchy serves each controller on this host: cgroup v2
/// (`cpu.max`, `memory.max`) or cgroup v1 (`cpu.cfs_quota_us`,
/// `memory.limit_in_bytes`). Where neither serves a controller, or the
/// hierarchy is read-only, that limit is off and `warning` says why.
public final class VMCgroups: Sendable {
    public static let parentName = "swiftlet"
    public static let periodMicroseconds = 100_000

    public let hierarchies: CgroupHierarchies
    /// The hierarchy used for the cpu and the memory controller, nil when unusable.
    public let cpuVersion: CgroupHierarchies.Version?
    public let memoryVersion: CgroupHierarchies.Version?
    public let warning: String?

    public var available: Bool { cpuVersion != nil || memoryVersion != nil }

    public init(root: String) {
        let hierarchies = CgroupHierarchies(root: root)
        self.hierarchies = hierarchies
        var problems: [String] = []
        func prepare(_ controller: String) -> CgroupHierarchies.Version? {
            guard let version = hierarchies.version(of: controller) else {
                problems.append("no cgroup v1 or v2 hierarchy under \(root) offers the \(controller) controller")
                return nil
            }
            do {
                switch version {
                case .v2:
                    guard let unified = hierarchies.unified else { return nil }
                    _ = try CgroupFiles.createDirectories(Self.parentName, under: unified)
                    try CgroupFiles.enableV2Controllers([controller], unified: unified, down: Self.parentName)
                case .v1:
                    guard let base = hierarchies.v1Directory(of: controller) else { return nil }
                    _ = try CgroupFiles.createDirectories(Self.parentName, under: base)
                }
                return version
            } catch {
                problems.append("cgroup v\(version.rawValue) \(controller) controller is not usable (\(error))")
                return nil
            }
        }
        cpuVersion = prepare("cpu")
        memoryVersion = prepare("memory")
        warning = problems.isEmpty ? nil
            : problems.joined(separator: "; ") + ": VM resource limits (cpu_percent, memory_mib) will not be applied"
    }

    /// The group directory of VM `name` for `controller`.
    public func group(of name: String, controller: String) -> String? {
        let version = controller == "cpu" ? cpuVersion : memoryVersion
        switch version {
        case .v2: return hierarchies.unified.map { $0 + "/" + Self.parentName + "/" + name }
        case .v1: return hierarchies.v1Directory(of: controller).map { $0 + "/" + Self.parentName + "/" + name }
        case nil: return nil
        }
    }

    /// The files and values that set the limits (no limit: "max" / -1).
    public static func settings(version: CgroupHierarchies.Version, cpuPercent: Int?, memoryMiB: Int?) -> (cpu: [CgroupSetting], memory: [CgroupSetting]) {
        let quota = cpuPercent.map { $0 * periodMicroseconds / 100 }
        let bytes = memoryMiB.map { $0 * 1_048_576 }
        switch version {
        case .v2:
            return ([CgroupSetting(file: "cpu.max", value: "\(quota.map(String.init) ?? "max") \(periodMicroseconds)")],
                    [CgroupSetting(file: "memory.max", value: bytes.map(String.init) ?? "max")])
        case .v1:
            return ([CgroupSetting(file: "cpu.cfs_period_us", value: String(periodMicroseconds)),
                     CgroupSetting(file: "cpu.cfs_quota_us", value: quota.map(String.init) ?? "-1")],
                    [CgroupSetting(file: "memory.limit_in_bytes", value: bytes.map(String.init) ?? "-1")])
        }
    }

    /// Creates the VM's groups, applies its limits and moves `pid` into
    /// them. Returns the group directories (empty when cgroups are unavailable).
    @discardableResult
    public func place(pid: Int32, name: String, cpuPercent: Int?, memoryMiB: Int?) throws(CgroupError) -> [String] {
        var groups: [String] = []
        for controller in ["cpu", "memory"] {
            guard let version = controller == "cpu" ? cpuVersion : memoryVersion,
                  let group = group(of: name, controller: controller) else { continue }
            let settings = Self.settings(version: version, cpuPercent: cpuPercent, memoryMiB: memoryMiB)
            let base = String(group.dropLast(name.utf8.count + 1))
            _ = try CgroupFiles.createDirectories(name, under: base)
            for setting in controller == "cpu" ? settings.cpu : settings.memory {
                try CgroupFiles.write(setting.value, to: group + "/" + setting.file)
            }
            try CgroupFiles.write(String(pid), to: group + "/cgroup.procs")
            if !groups.contains(group) { groups.append(group) }
        }
        return groups
    }

    /// Removes the VM's emptied groups (the kernel refuses while processes remain).
    public func remove(name: String) {
        for controller in ["cpu", "memory"] {
            if let group = group(of: name, controller: controller) { _ = try? systemCall("rmdir \(group)") { rmdir(group) } }
        }
    }

    /// One line for `GET /v1/version`: which hierarchy serves each limit.
    public var summary: String {
        if let warning { return warning }
        func describe(_ controller: String, _ version: CgroupHierarchies.Version?) -> String {
            guard let version, let base = group(of: "", controller: controller) else { return "\(controller): off" }
            return "\(controller): cgroup v\(version.rawValue) at \(base.dropLast())"
        }
        return describe("cpu", cpuVersion) + ", " + describe("memory", memoryVersion)
    }
}
