import Cgroups

/// What swiftlet-jailer was asked to do: Firecracker's jailer flags.
public struct JailerConfiguration: Sendable, Equatable {
    public static let defaultChrootBase = "/srv/jailer"
    /// Firecracker's jailer bounds open files to this unless `--resource-limit no-file=` says otherwise.
    public static let defaultOpenFiles: UInt64 = 2048

    public enum ResourceLimit: String, Sendable, Equatable, CaseIterable {
        case fileSize = "fsize"
        case openFiles = "no-file"
    }

    public var id: String
    public var execFile: String
    public var uid: UInt32
    public var gid: UInt32
    public var chrootBase: String = defaultChrootBase
    public var networkNamespace: String?
    public var cgroups: [CgroupSetting] = []
    public var cgroupVersion: CgroupHierarchies.Version = .v1
    /// Relative to each hierarchy; defaults to the exec file's name.
    public var parentCgroup: String?
    public var daemonize = false
    public var newPIDNamespace = false
    public var resourceLimits: [(ResourceLimit, UInt64)] = []
    /// Everything after `--`, passed on to the exec file.
    public var extraArguments: [String] = []

    public init(id: String, execFile: String, uid: UInt32, gid: UInt32) {
        self.id = id
        self.execFile = execFile
        self.uid = uid
        self.gid = gid
    }

    public static func == (left: Self, right: Self) -> Bool {
        left.id == right.id && left.execFile == right.execFile && left.uid == right.uid && left.gid == right.gid
            && left.chrootBase == right.chrootBase && left.networkNamespace == right.networkNamespace
            && left.cgroups == right.cgroups && left.cgroupVersion == right.cgroupVersion && left.parentCgroup == right.parentCgroup
            && left.daemonize == right.daemonize && left.newPIDNamespace == right.newPIDNamespace
            && left.resourceLimits.map(\.0) == right.resourceLimits.map(\.0) && left.resourceLimits.map(\.1) == right.resourceLimits.map(\.1)
            && left.extraArguments == right.extraArguments
    }

    /// The exec file's last path component (`firecracker`, `swiftlet-vmm`).
    public var execFileName: String { String(execFile.split(separator: "/").last ?? "") }
    /// `<chroot_base>/<exec_file_name>/<id>`.
    public var jailDirectory: String { chrootBase + "/" + execFileName + "/" + id }
    /// `<chroot_base>/<exec_file_name>/<id>/root`, the new `/`.
    public var chrootDirectory: String { jailDirectory + "/root" }
    /// The cgroup path below each hierarchy's root.
    public var cgroupParent: String { parentCgroup ?? execFileName }
    /// The file, inside the jail, where `--new-pid-ns` records the child's pid.
    public var pidFileName: String { execFileName + ".pid" }

    /// The limits to set: the given ones, plus the default open-file bound.
    public var effectiveResourceLimits: [(ResourceLimit, UInt64)] {
        resourceLimits.contains { $0.0 == .openFiles } ? resourceLimits : resourceLimits + [(.openFiles, Self.defaultOpenFiles)]
    }

    /// The exec file's arguments, as Firecracker's jailer passes them.
    public func execArguments(startTimeMicroseconds: UInt64, startCPUTimeMicroseconds: UInt64, parentCPUTimeMicroseconds: UInt64?) -> [String] {
        var arguments = ["/" + execFileName, "--id=\(id)", "--start-time-us=\(startTimeMicroseconds)",
                         "--start-time-cpu-us=\(startCPUTimeMicroseconds)"]
        if let parentCPUTimeMicroseconds { arguments.append("--parent-cpu-time-us=\(parentCPUTimeMicroseconds)") }
        return arguments + extraArguments
    }
}

/// Parsing and validating the jailer's command line. Every error is one
/// line naming the bad value and what is valid.
public enum JailerArguments {
    public static let usage = """
        usage: swiftlet-jailer --id <id> --exec-file <path> --uid <uid> --gid <gid>
                               [--chroot-base-dir <dir>] [--netns <path>]
                               [--cgroup <file>=<value>]... [--cgroup-version 1|2] [--parent-cgroup <relative path>]
                               [--resource-limit fsize=<bytes>|no-file=<count>]... [--daemonize] [--new-pid-ns]
                               [-- <arguments for the exec file>]
        """

    /// Firecracker's rule: alphanumerics and '-', at most 64 characters.
    public static func validateID(_ id: String) throws(JailerError) {
        guard (1...64).contains(id.utf8.count),
              id.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 })
        else { throw .invalidArgument("--id '\(id)' is invalid: use 1 to 64 letters, digits and '-'") }
    }

    /// Firecracker requires "firecracker" in the exec file's name; Swiftlet's own VMM is accepted too.
    public static func validateExecFileName(_ path: String) throws(JailerError) {
        let name = path.split(separator: "/").last.map(String.init) ?? ""
        guard name.contains("firecracker") || name.contains("swiftlet-vmm"), name != ".", name != ".." else {
            throw .invalidArgument("--exec-file '\(path)' is invalid: its file name must contain 'firecracker' or 'swiftlet-vmm'")
        }
    }

    /// A relative cgroup path: no leading '/', no '.' or '..' parts.
    static func validateParentCgroup(_ path: String) throws(JailerError) {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard !path.isEmpty, path.utf8.count <= 256, parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }),
              !path.contains("\n") else {
            throw .invalidArgument("--parent-cgroup '\(path)' is invalid: give a relative path such as 'swiftlet/vms' (no '.', '..' or empty parts)")
        }
    }

    public static func parse(_ arguments: [String]) throws(JailerError) -> JailerConfiguration {
        var values: [String: String] = [:]
        var cgroups: [CgroupSetting] = []
        var limits: [(JailerConfiguration.ResourceLimit, UInt64)] = []
        var flags: Set<String> = []
        var extra: [String] = []
        let single: Set<String> = ["id", "exec-file", "uid", "gid", "chroot-base-dir", "netns", "cgroup-version", "parent-cgroup"]
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "--" {
                extra = Array(arguments[index...])
                break
            }
            guard argument.hasPrefix("--"), argument.utf8.count > 2 else {
                throw .invalidArgument("unexpected argument '\(argument)': options start with '--'; arguments for the exec file go after '--'")
            }
            var name = String(argument.dropFirst(2))
            var inlineValue: String?
            if let equals = name.firstIndex(of: "=") {
                inlineValue = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            }
            if name == "daemonize" || name == "new-pid-ns" {
                guard inlineValue == nil else { throw .invalidArgument("--\(name) takes no value") }
                flags.insert(name)
                continue
            }
            guard single.contains(name) || name == "cgroup" || name == "resource-limit" else {
                throw .invalidArgument("unknown option --\(name)\n\(usage)")
            }
            let value: String
            if let inlineValue {
                value = inlineValue
            } else {
                guard index < arguments.count else { throw .invalidArgument("--\(name) needs a value") }
                value = arguments[index]
                index += 1
            }
            switch name {
            case "cgroup":
                do { cgroups.append(try CgroupSetting(parsing: value)) } catch { throw .invalidArgument("--cgroup: \(error)") }
            case "resource-limit":
                let parts = value.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, let resource = JailerConfiguration.ResourceLimit(rawValue: parts[0]), let number = UInt64(parts[1]) else {
                    throw .invalidArgument("--resource-limit '\(value)' is invalid: use fsize=<bytes> or no-file=<count>")
                }
                limits.removeAll { $0.0 == resource }
                limits.append((resource, number))
            default:
                guard values[name] == nil else { throw .invalidArgument("--\(name) is given twice") }
                values[name] = value
            }
        }
        for required in ["id", "exec-file", "uid", "gid"] where values[required] == nil {
            throw .invalidArgument("missing --\(required)\n\(usage)")
        }
        let id = values["id"] ?? "", execFile = values["exec-file"] ?? ""
        try validateID(id)
        try validateExecFileName(execFile)
        guard let uid = UInt32(values["uid"] ?? ""), uid != UInt32.max else {
            throw .invalidArgument("--uid '\(values["uid"] ?? "")' is invalid: give a numeric user id")
        }
        guard let gid = UInt32(values["gid"] ?? ""), gid != UInt32.max else {
            throw .invalidArgument("--gid '\(values["gid"] ?? "")' is invalid: give a numeric group id")
        }
        var configuration = JailerConfiguration(id: id, execFile: execFile, uid: uid, gid: gid)
        if let base = values["chroot-base-dir"] {
            guard base.hasPrefix("/"), !base.split(separator: "/").contains("..") else {
                throw .invalidArgument("--chroot-base-dir '\(base)' is invalid: give an absolute path without '..'")
            }
            configuration.chrootBase = base.count > 1 && base.hasSuffix("/") ? String(base.dropLast()) : base
        }
        configuration.networkNamespace = values["netns"]
        if let version = values["cgroup-version"] {
            guard let number = Int(version), let parsed = CgroupHierarchies.Version(rawValue: number) else {
                throw .invalidArgument("--cgroup-version '\(version)' is invalid: use 1 or 2")
            }
            configuration.cgroupVersion = parsed
        }
        if let parent = values["parent-cgroup"] {
            try validateParentCgroup(parent)
            configuration.parentCgroup = parent
        }
        configuration.cgroups = cgroups
        configuration.resourceLimits = limits
        configuration.daemonize = flags.contains("daemonize")
        configuration.newPIDNamespace = flags.contains("new-pid-ns")
        configuration.extraArguments = extra
        return configuration
    }
}
