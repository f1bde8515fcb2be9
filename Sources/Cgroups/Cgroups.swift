import Glibc
import HostSystem

/// The cgroup hierarchies of a host, found under one root directory
/// (normally /sys/fs/cgroup), per controller: a host may mount some
/// controllers as cgroup v1 hierarchies (`<root>/<controller>`, with a
/// `tasks` file) and others in the unified v2 hierarchy (`<root>` itself or
/// `<root>/unified`, whose `cgroup.controllers` lists what it can use).
/// Hybrid hosts (v1 controllers, v2 mounted without any) are common, so
/// every controller is looked up on its own.
public struct CgroupHierarchies: Sendable, Equatable {
    public enum Version: Int, Sendable, Equatable { case v1 = 1, v2 = 2 }

    public let root: String
    /// The unified (v2) hierarchy's directory, if one is mounted.
    public let unified: String?
    /// The controllers the unified hierarchy offers (its `cgroup.controllers`).
    public let unifiedControllers: Set<String>

    public init(root: String) {
        self.root = root
        var unified: String?
        var controllers: Set<String> = []
        for candidate in [root, root + "/unified"] {
            if let text = Self.read(candidate + "/cgroup.controllers") {
                unified = candidate
                controllers = Set(text.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
                break
            }
        }
        self.unified = unified
        self.unifiedControllers = controllers
    }

    /// The directory of `controller`'s v1 hierarchy, if it is mounted as one.
    public func v1Directory(of controller: String) -> String? {
        guard Self.isControllerName(controller) else { return nil }
        let directory = root + "/" + controller
        let tasks = directory + "/tasks"
        return (try? systemCall("access \(tasks)") { access(tasks, F_OK) }) != nil ? directory : nil
    }

    /// Which hierarchy serves `controller`: v2 where the unified hierarchy
    /// offers it, else v1 where it is mounted on its own, else none.
    public func version(of controller: String) -> Version? {
        if unified != nil, unifiedControllers.contains(controller) { return .v2 }
        if v1Directory(of: controller) != nil { return .v1 }
        return nil
    }

    /// Controller names are short lower-case words; anything else (a path,
    /// `..`) must never become part of a cgroup path.
    static func isControllerName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 32 && name.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || $0 == 95 }
    }

    /// A small text file's contents (cgroup files are at most a few KiB), or nil.
    static func read(_ path: String) -> String? {
        guard let file = try? OwnedFileDescriptor.open(path, flags: O_RDONLY) else { return nil }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 65_536 {
            // SAFETY: the buffer is `chunk`'s own storage, alive for the call.
            let count = chunk.withUnsafeMutableBytes { buffer in (try? file.read(into: buffer)) ?? -1 }
            guard count > 0 else { break }
            bytes += chunk[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// One failed step of setting up a cgroup, naming the file or directory.
public enum CgroupError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `--cgroup` needs `<controller>.<file>=<value>`.
    case malformedSetting(String)
    /// The controller has no hierarchy of the requested version here.
    case controllerUnavailable(controller: String, version: CgroupHierarchies.Version, root: String)
    case creatingDirectory(path: String, cause: SystemCallError)
    case writing(path: String, value: String, cause: SystemCallError)

    public var description: String {
        switch self {
        case .malformedSetting(let text):
            "invalid cgroup setting '\(text)': expected <controller>.<file>=<value>, e.g. cpu.shares=100 or memory.max=268435456"
        case .controllerUnavailable(let controller, let version, let root):
            "the \(controller) controller has no cgroup v\(version.rawValue) hierarchy under \(root)"
        case .creatingDirectory(let path, let cause):
            "creating cgroup \(path): \(cause)"
        case .writing(let path, let value, let cause):
            "writing '\(value)' to \(path): \(cause)"
        }
    }
}

/// One `--cgroup` value: a file of a controller and what to write to it.
public struct CgroupSetting: Sendable, Equatable {
    public let file: String
    public let value: String
    /// The controller is the file name's first dotted part (`cpu` of `cpu.shares`).
    public var controller: String { String(file.prefix { $0 != "." }) }

    public init(file: String, value: String) {
        self.file = file
        self.value = value
    }

    /// Parses `cpu.shares=100`. The file must be `<controller>.<name>` with
    /// no slash, so a setting can never name a path outside its group.
    public init(parsing text: String) throws(CgroupError) {
        guard let equals = text.firstIndex(of: "=") else { throw .malformedSetting(text) }
        let file = String(text[..<equals])
        let value = String(text[text.index(after: equals)...])
        let parts = file.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 2, parts.allSatisfy({ !$0.isEmpty }), !file.contains("/"),
              CgroupHierarchies.isControllerName(String(parts[0])),
              !value.isEmpty, !value.contains("\n") else { throw .malformedSetting(text) }
        self.init(file: file, value: value)
    }
}

/// Creating groups, writing their files and moving processes in, for both
/// cgroup versions. Used by swiftletd (per-VM limits) and swiftlet-jailer.
public enum CgroupFiles {
    /// `mkdir -p` below `base` (which must exist), one component at a time.
    public static func createDirectories(_ relative: String, under base: String) throws(CgroupError) -> String {
        var path = base
        for component in relative.split(separator: "/") where !component.isEmpty {
            path += "/" + component
            do {
                _ = try systemCall("mkdir \(path)") { mkdir(path, 0o755) }
            } catch where error.errno == Errno(rawValue: EEXIST) {
                continue
            } catch {
                throw .creatingDirectory(path: path, cause: error)
            }
        }
        return path
    }

    /// Writes `value` to a cgroup file in one write, as cgroupfs needs. A
    /// plain directory standing in for cgroupfs (unit tests) gets the file created.
    public static func write(_ value: String, to path: String) throws(CgroupError) {
        do throws(SystemCallError) {
            let file = try OwnedFileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
            // Values are a few bytes: cgroupfs takes them in the first write.
            try file.writeAll(Array(value.utf8))
        } catch {
            throw .writing(path: path, value: value, cause: error)
        }
    }

    /// v2 only lets a group use a controller its parent enabled in
    /// `cgroup.subtree_control`: enable `controllers` on every level from the
    /// unified root down to `relative` (exclusive of the leaf).
    public static func enableV2Controllers(_ controllers: Set<String>, unified: String, down relative: String) throws(CgroupError) {
        guard !controllers.isEmpty else { return }
        let line = controllers.sorted().map { "+" + $0 }.joined(separator: " ")
        var path = unified
        try write(line, to: path + "/cgroup.subtree_control")
        for component in relative.split(separator: "/") where !component.isEmpty {
            path += "/" + component
            try write(line, to: path + "/cgroup.subtree_control")
        }
    }

    /// v1 cpuset groups start with empty `cpuset.cpus`/`cpuset.mems`, and a
    /// process cannot join such a group: copy them from the parent, as
    /// Firecracker's jailer does.
    static func inheritCpuset(group: String, parent: String) throws(CgroupError) {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = CgroupHierarchies.read(group + "/" + file)?.trimmingNewlines ?? ""
            guard current.isEmpty, let inherited = CgroupHierarchies.read(parent + "/" + file)?.trimmingNewlines, !inherited.isEmpty else { continue }
            try write(inherited, to: group + "/" + file)
        }
    }

    /// Firecracker jailer semantics: for each controller named in `settings`,
    /// create `<hierarchy>/<parent>/<id>`, write the settings and move `pid`
    /// in. v1 uses each controller's own hierarchy; v2 the unified one.
    /// Returns the groups created.
    @discardableResult
    public static func apply(_ settings: [CgroupSetting], version: CgroupHierarchies.Version, hierarchies: CgroupHierarchies,
                             parent: String, id: String, pid: Int32) throws(CgroupError) -> [String] {
        guard !settings.isEmpty else { return [] }
        let relative = parent + "/" + id
        var groups: [String] = []
        switch version {
        case .v1:
            var byController: [(String, [CgroupSetting])] = []
            for setting in settings {
                if let index = byController.firstIndex(where: { $0.0 == setting.controller }) {
                    byController[index].1.append(setting)
                } else {
                    byController.append((setting.controller, [setting]))
                }
            }
            for (controller, controllerSettings) in byController {
                guard let base = hierarchies.v1Directory(of: controller) else {
                    throw .controllerUnavailable(controller: controller, version: .v1, root: hierarchies.root)
                }
                let group = try createDirectories(relative, under: base)
                if controller == "cpuset" {
                    var path = base
                    for component in relative.split(separator: "/") {
                        let child = path + "/" + component
                        try inheritCpuset(group: child, parent: path)
                        path = child
                    }
                }
                for setting in controllerSettings { try write(setting.value, to: group + "/" + setting.file) }
                try write(String(pid), to: group + "/cgroup.procs")
                groups.append(group)
            }
        case .v2:
            guard let unified = hierarchies.unified else {
                throw .controllerUnavailable(controller: settings[0].controller, version: .v2, root: hierarchies.root)
            }
            let controllers = Set(settings.map(\.controller))
            for controller in controllers.sorted() where !hierarchies.unifiedControllers.contains(controller) {
                throw .controllerUnavailable(controller: controller, version: .v2, root: hierarchies.root)
            }
            let group = try createDirectories(relative, under: unified)
            try enableV2Controllers(controllers, unified: unified, down: parent)
            for setting in settings { try write(setting.value, to: group + "/" + setting.file) }
            try write(String(pid), to: group + "/cgroup.procs")
            groups.append(group)
        }
        return groups
    }
}

extension String {
    var trimmingNewlines: String {
        var text = Substring(self)
        while let last = text.last, last == "\n" || last == " " { text = text.dropLast() }
        return String(text)
    }
}
