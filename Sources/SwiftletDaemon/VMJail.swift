import Foundation
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// How swiftletd jails its VMMs (absent with `--no-jail`).
public struct JailConfiguration: Sendable {
    /// The swiftlet-jailer binary.
    public var jailerBinary: String
    /// `--chroot-base-dir`: jails are `<base>/swiftlet-vmm/<id>/root`.
    public var chrootBase: String
    /// Who jailed VMMs run as.
    public var uid: UInt32
    public var gid: UInt32

    public static let defaultUID: UInt32 = 64064
    public static let defaultGID: UInt32 = 64064

    public init(jailerBinary: String, chrootBase: String, uid: UInt32 = defaultUID, gid: UInt32 = defaultGID) {
        self.jailerBinary = jailerBinary
        self.chrootBase = chrootBase
        self.uid = uid
        self.gid = gid
    }
}

/// Running one VM through swiftlet-jailer: its jail id, the VM's files made
/// reachable inside the jail, the command line, and the clean-up.
struct VMJail {
    let configuration: JailConfiguration
    let name: String
    let vmmBinary: String

    /// The jailer's `--id`: letters, digits and '-' only, at most 64. VM
    /// names may also hold '.' and '_'; such names get a hash suffix so two
    /// names never share a jail.
    static func jailID(for name: String) -> String {
        let plain = name.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 }
        if plain && (1...64).contains(name.utf8.count) { return name }
        var hash: UInt32 = 2_166_136_261  // FNV-1a
        for byte in name.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        let cleaned = String(name.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "-" }.prefix(55))
        return cleaned + "-" + String(hash, radix: 16)
    }

    var id: String { Self.jailID(for: name) }
    var vmmName: String { (vmmBinary as NSString).lastPathComponent }
    /// `<base>/<vmm name>/<id>`; the jail root is its `root`.
    var directory: String { configuration.chrootBase + "/" + vmmName + "/" + id }
    var root: String { directory + "/root" }

    struct Failure: Error, CustomStringConvertible { let description: String }

    /// Empties and recreates the jail root, then puts the VM's files in it:
    /// copies of the kernel and initrd (read-only, so a copy is safe and
    /// needs no change to the host file), hard links to the disk images (a
    /// copy would lose the guest's writes) given to the jail user, as
    /// Firecracker users do. Returns the in-jail path of each host path.
    ///
    /// A restore also gets the snapshot's files, hard-linked as
    /// `/snapshot/state` and `/snapshot/memory` (copied when on another file
    /// system), readable by the jail's group only: the VMM reads them, and
    /// must not change them, since other restores read them too.
    ///
    /// `backing` (qcow2 backing files, absolute) are hard-linked at their
    /// own paths inside the jail, where the overlay's header points the
    /// VMM, readable by the jail's group only (the VMM only reads them).
    func prepare(kernel: String, initrd: String?, disks: [String], backing: [String] = [], snapshot: (state: String, memory: String)? = nil) throws -> [String: String] {
        removeJail()
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var mapping: [String: String] = [:]
        func copy(_ path: String, as inside: String) throws {
            let target = root + "/" + inside
            try FileManager.default.copyItem(atPath: path, toPath: target)
            guard chown(target, configuration.uid, configuration.gid) == 0, chmod(target, 0o400) == 0 else {
                throw Failure(description: "giving \(target) to the jail user: \(String(cString: strerror(errno)))")
            }
            mapping[path] = "/" + inside
        }
        try copy(kernel, as: "kernel")
        if let initrd { try copy(initrd, as: "initrd") }
        for (index, disk) in disks.enumerated() where mapping[disk] == nil {
            let inside = "disk\(index)"
            guard link(disk, root + "/" + inside) == 0 else {
                let reason = errno == EXDEV
                    ? "it is on another file system than the jails in \(configuration.chrootBase); move it there, start swiftletd with --jail-dir on its file system, or --no-jail"
                    : String(cString: strerror(errno))
                throw Failure(description: "cannot link disk '\(disk)' into the jail: \(reason)")
            }
            // The jailed VMM opens its disks as the jail user.
            guard chown(root + "/" + inside, configuration.uid, configuration.gid) == 0 else {
                throw Failure(description: "giving disk '\(disk)' to the jail user \(configuration.uid): \(String(cString: strerror(errno)))")
            }
            mapping[disk] = "/" + inside
        }
        for file in Set(backing) where file.hasPrefix("/") {
            let target = root + file
            // Folders on the way are traversable (not listable) by the jail user; the daemon's umask would make them 0700.
            var folder = root
            for component in (file as NSString).deletingLastPathComponent.split(separator: "/") {
                folder += "/" + component
                if mkdir(folder, 0o711) != 0 && errno != EEXIST {
                    throw Failure(description: "creating \(folder) in the jail: \(String(cString: strerror(errno)))")
                }
                chmod(folder, 0o711)
            }
            guard link(file, target) == 0 else {
                let reason = errno == EXDEV ? "it is on another file system than the jails in \(configuration.chrootBase)" : String(cString: strerror(errno))
                throw Failure(description: "cannot link backing image '\(file)' into the jail: \(reason)")
            }
            guard chown(target, geteuid(), configuration.gid) == 0, chmod(target, 0o440) == 0 else {
                throw Failure(description: "giving backing image '\(file)' to the jail's group: \(String(cString: strerror(errno)))")
            }
        }
        if let snapshot {
            let folder = root + "/snapshot"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            guard chown(folder, geteuid(), configuration.gid) == 0, chmod(folder, 0o750) == 0 else {
                throw Failure(description: "giving \(folder) to the jail's group: \(String(cString: strerror(errno)))")
            }
            for (host, inside) in [(snapshot.state, "snapshot/state"), (snapshot.memory, "snapshot/memory")] {
                let target = root + "/" + inside
                if link(host, target) != 0 {
                    guard errno == EXDEV else {
                        throw Failure(description: "cannot link the snapshot file '\(host)' into the jail: \(String(cString: strerror(errno)))")
                    }
                    try DiskCopy.copy(from: host, to: target)
                }
                guard chown(target, geteuid(), configuration.gid) == 0, chmod(target, 0o440) == 0 else {
                    throw Failure(description: "giving \(target) to the jail's group: \(String(cString: strerror(errno)))")
                }
                mapping[host] = "/" + inside
            }
        }
        return mapping
    }

    /// A folder in the jail the jailed VMM may write a snapshot into (its
    /// root is not writable by it): `/snapshot-NAME`, owned by the jail user.
    /// Returns the path inside the jail and on the host.
    func snapshotOutput(named name: String) throws -> (inside: String, host: String) {
        let inside = "/snapshot-" + name
        let host = root + inside
        try? FileManager.default.removeItem(atPath: host)
        guard mkdir(host, 0o700) == 0, chown(host, configuration.uid, configuration.gid) == 0 else {
            throw Failure(description: "creating \(host) for the jailed VMM: \(String(cString: strerror(errno)))")
        }
        return (inside, host)
    }

    /// The jailer's command line around the VMM's arguments. No
    /// `--new-pid-ns`/`--daemonize`: the jailer execs the VMM in its own
    /// process, so the daemon's child is the VMM (waitpid, signals) and its
    /// stdio are the console files the daemon opened.
    func jailerArguments(vmmArguments: [String]) -> [String] {
        ["--id", id, "--exec-file", vmmBinary, "--uid", String(configuration.uid), "--gid", String(configuration.gid),
         "--chroot-base-dir", configuration.chrootBase, "--"] + vmmArguments
    }

    /// Removes the jail (links and copies only: removing a hard link never
    /// touches the image). Called once the VMM has ended, when its mount
    /// namespace and its /proc are gone.
    func removeJail() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}
