import Foundation
import Logging

/// Per-VM cgroup v2 groups under `<root>/swiftlet/<name>`: cpu.max and
/// memory.max from the definition's limits. Where the hierarchy is not v2
/// or not writable, `available` is false and `warning` says why.
public final class CgroupManager: Sendable {
    public let root: String
    public let available: Bool
    public let warning: String?
    public var parent: String { root + "/swiftlet" }

    public init(root: String, logger: Logger) {
        self.root = root
        let fileManager = FileManager.default
        guard let controllers = try? String(contentsOfFile: root + "/cgroup.controllers", encoding: .utf8) else {
            available = false
            warning = "no cgroup v2 hierarchy at \(root) (cgroup.controllers missing; a v1 or hybrid host?): VM resource limits (cpu_percent, memory_mib) will not be applied"
            logger.warning("cgroups unavailable", metadata: ["reason": "\(warning!)"])
            return
        }
        let present = controllers.split(whereSeparator: \.isWhitespace).map(String.init)
        guard present.contains("cpu"), present.contains("memory") else {
            available = false
            warning = "the cgroup v2 hierarchy at \(root) lacks the cpu or memory controller (has: \(present.joined(separator: " "))): VM resource limits will not be applied"
            logger.warning("cgroups unavailable", metadata: ["reason": "\(warning!)"])
            return
        }
        do {
            try Self.append("+cpu +memory", to: root + "/cgroup.subtree_control")
            try fileManager.createDirectory(atPath: root + "/swiftlet", withIntermediateDirectories: true)
            try Self.append("+cpu +memory", to: root + "/swiftlet/cgroup.subtree_control")
            available = true
            warning = nil
        } catch {
            available = false
            warning = "cgroup v2 at \(root) is not writable (\(error)): VM resource limits will not be applied"
            logger.warning("cgroups unavailable", metadata: ["reason": "\(warning!)"])
        }
    }

    static func append(_ text: String, to path: String) throws {
        guard let handle = FileHandle(forWritingAtPath: path) else {
            if FileManager.default.fileExists(atPath: path) {
                throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
            }
            // A plain directory standing in for cgroupfs (tests): create the file.
            try text.write(toFile: path, atomically: false, encoding: .utf8)
            return
        }
        defer { try? handle.close() }
        try handle.write(contentsOf: Data(text.utf8))
    }

    /// Creates the VM's group, applies its limits and moves `pid` into it.
    /// Returns the group's path, or nil when cgroups are unavailable.
    public func place(pid: Int32, name: String, cpuPercent: Int?, memoryMiB: Int?) throws -> String? {
        guard available else { return nil }
        let group = parent + "/" + name
        try FileManager.default.createDirectory(atPath: group, withIntermediateDirectories: true)
        if let cpuPercent {
            let period = 100_000
            try Self.append("\(cpuPercent * period / 100) \(period)", to: group + "/cpu.max")
        } else {
            try Self.append("max 100000", to: group + "/cpu.max")
        }
        try Self.append(memoryMiB.map { String($0 * 1_048_576) } ?? "max", to: group + "/memory.max")
        try Self.append(String(pid), to: group + "/cgroup.procs")
        return group
    }

    /// Removes an emptied group (the kernel refuses while processes remain).
    public func remove(name: String) {
        guard available else { return }
        _ = rmdir(parent + "/" + name)
    }
}
