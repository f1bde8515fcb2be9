import Cgroups
import Logging

/// Per-VM cgroup limits (cpu_percent, memory_mib) on whichever cgroup
/// version serves each controller here (see the Cgroups target); logs once
/// at start-up when a limit cannot be applied on this host.
public final class CgroupManager: Sendable {
    public let root: String
    let groups: VMCgroups
    public var available: Bool { groups.available }
    public var warning: String? { groups.warning }
    /// One line on where limits go, for `GET /v1/version`.
    public var summary: String { groups.summary }

    public init(root: String, logger: Logger) {
        self.root = root
        groups = VMCgroups(root: root)
        if let warning = groups.warning {
            logger.warning("cgroup limits partly or wholly unavailable", metadata: ["reason": "\(warning)"])
        }
    }

    /// Creates the VM's groups, applies its limits and moves `pid` into
    /// them. Returns the groups (space-separated), or nil when cgroups are unavailable.
    public func place(pid: Int32, name: String, cpuPercent: Int?, memoryMiB: Int?) throws -> String? {
        let placed = try groups.place(pid: pid, name: name, cpuPercent: cpuPercent, memoryMiB: memoryMiB)
        return placed.isEmpty ? nil : placed.joined(separator: " ")
    }

    /// The groups VM `name` would be in (for re-adopted VMs).
    public func groupDescription(name: String) -> String? {
        let paths = ["cpu", "memory"].compactMap { groups.group(of: name, controller: $0) }
        let unique = paths.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        return unique.isEmpty ? nil : unique.joined(separator: " ")
    }

    /// Removes an emptied group (the kernel refuses while processes remain).
    public func remove(name: String) {
        groups.remove(name: name)
    }
}
