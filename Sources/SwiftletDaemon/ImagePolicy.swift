import Foundation
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// Where VM definitions may take kernels, initrds and disks from: the state
/// folder's `images/` and each `--image-dir`. A path is resolved first
/// (symlinks and `..`, as realpath(3) does), so neither a link inside an
/// image folder nor `images/../..` reaches a file elsewhere; device nodes
/// are refused unless `--allow-device-nodes` (a disk on a block device).
public struct ImagePolicy: Sendable {
    /// Resolved (realpath) folders, without a trailing slash.
    public let directories: [String]
    public let allowDeviceNodes: Bool

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    /// Resolves each folder; one that is missing or not a folder is an error naming it.
    public init(directories: [String], allowDeviceNodes: Bool) throws(Failure) {
        var resolved: [String] = []
        for directory in directories {
            var isDirectory: ObjCBool = false
            guard let real = Self.realPath(directory), FileManager.default.fileExists(atPath: real, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw Failure(description: "image directory '\(directory)' does not exist or is not a folder; create it or fix --image-dir")
            }
            if !resolved.contains(real) { resolved.append(real) }
        }
        self.directories = resolved
        self.allowDeviceNodes = allowDeviceNodes
    }

    static func realPath(_ path: String) -> String? {
        guard let pointer = realpath(path, nil) else { return nil }
        defer { free(pointer) }
        return String(cString: pointer)
    }

    func contains(_ resolved: String) -> Bool {
        directories.contains { $0 == "/" || resolved.hasPrefix($0 + "/") }
    }

    var allowedList: String { directories.joined(separator: ", ") }

    /// The resolved path of an image in `field`, or a 400 naming the path,
    /// what it resolved to and the allowed folders. `mustExist` false (at
    /// define) also accepts a file not created yet in an allowed folder;
    /// start checks again with `mustExist` and runs the resolved path.
    public func resolve(_ path: String, field: String, mustExist: Bool) throws(DaemonError) -> String {
        let shown = DefinitionValidator.printable(path, limit: 4096)
        var resolved: String
        if let real = Self.realPath(path) {
            resolved = real
        } else {
            let missing = errno == ENOENT
            let parent = (path as NSString).deletingLastPathComponent, base = (path as NSString).lastPathComponent
            guard missing, !mustExist, base != "..", base != ".", !base.isEmpty, let realParent = Self.realPath(parent) else {
                throw .badRequest("\(field) '\(shown)' \(missing ? "does not exist" : "cannot be resolved: \(String(cString: strerror(errno)))"); images go in \(allowedList)")
            }
            resolved = realParent == "/" ? "/" + base : realParent + "/" + base
        }
        guard contains(resolved) else {
            let via = resolved == path ? "" : " (resolves to \(DefinitionValidator.printable(resolved, limit: 4096)))"
            throw .badRequest("\(field) '\(shown)'\(via) is outside the image directories; allowed: \(allowedList) (swiftletd --image-dir adds one)")
        }
        var status = stat()
        if stat(resolved, &status) == 0 {
            switch status.st_mode & S_IFMT {
            case S_IFREG:
                break
            case S_IFBLK, S_IFCHR:
                guard allowDeviceNodes else {
                    throw .badRequest("\(field) '\(shown)' is a device node; swiftletd refuses those unless started with --allow-device-nodes")
                }
            default:
                throw .badRequest("\(field) '\(shown)' is not a regular file (a folder, FIFO or socket); images are files")
            }
        } else if mustExist {
            throw .badRequest("\(field) '\(shown)' does not exist; images go in \(allowedList)")
        }
        return resolved
    }

    /// Checks every image of `definition`; with `mustExist`, returns it with resolved paths (what the VMM is given).
    public func check(_ definition: VMDefinition, mustExist: Bool) throws(DaemonError) -> VMDefinition {
        var checked = definition
        if let kernel = definition.kernel { checked.kernel = try resolve(kernel, field: "kernel", mustExist: mustExist) }
        if let initrd = definition.initrd { checked.initrd = try resolve(initrd, field: "initrd", mustExist: mustExist) }
        // Volumes are checked when they are created (their pool is inside an image folder) and resolved at start.
        for index in definition.disks.indices {
            guard let path = definition.disks[index].path else { continue }
            checked.disks[index].path = try resolve(path, field: "disks[\(index)].path", mustExist: mustExist)
        }
        return checked
    }
}
