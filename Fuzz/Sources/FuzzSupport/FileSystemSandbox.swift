import CFuzzDriver
import Glibc

/// Confines a fuzz target's file system writes before it runs any input.
///
/// The targets drive code that opens files named by its input (the control
/// API's `PUT /logger`, `/metrics`, `/vsock`, drives, config files...). Run
/// unconfined, a fuzzer would create and write files anywhere on the host.
/// So the process enters a private mount namespace and chroots into a view
/// of the host where everything is read-only and device nodes are unusable
/// (`MS_RDONLY|MS_NODEV|MS_NOSUID` on every mount), except:
///
/// - `/tmp`: a fresh tmpfs, thrown away with the namespace at exit;
/// - `/dev`: a tmpfs holding only `null`, `zero`, `random` and `urandom`;
/// - libFuzzer's own outputs: the first corpus directory (where it adds new
///   inputs) and the directory of `-artifact_prefix`/`-exact_artifact_path`
///   (scripts/fuzz always passes one: libFuzzer's default, the working
///   directory, stays read-only, so a crash is then only in the log).
///
/// Every other create or write fails with EROFS (or EACCES for a device),
/// which the code under test must handle like any other refusal. As root it
/// needs no user namespace; otherwise it maps the caller to root in a new
/// one. If neither works the fuzzer refuses to start rather than run unconfined.
enum FileSystemSandbox {
    static func fail(_ step: String) -> Never {
        let message = "fuzz: cannot sandbox the file system (\(step): \(String(cString: strerror(errno)))); refusing to fuzz unconfined\n"
        _ = message.withCString { write(2, $0, strlen($0)) }
        exit(2)
    }

    static func check(_ result: Int32, _ step: @autoclosure () -> String) {
        if result != 0 { fail(step()) }
    }

    /// The directories libFuzzer writes to, from its command line.
    static func writableDirectories(_ arguments: [String]) -> [String] {
        var directories: [String] = []
        // Input files given instead of corpus directories are only read.
        if let firstCorpus = arguments.dropFirst().first(where: { !$0.hasPrefix("-") }), isDirectory(firstCorpus) {
            directories.append(firstCorpus)
        }
        for argument in arguments where argument.hasPrefix("-artifact_prefix=") || argument.hasPrefix("-exact_artifact_path=") {
            let value = String(argument.drop { $0 != "=" }.dropFirst())
            // A prefix "dir/name-" or a path "dir/file": its directory.
            if let slash = value.lastIndex(of: "/") { directories.append(String(value[..<slash])) } else { directories.append(".") }
        }
        return directories.map(absolute)
    }

    static func isDirectory(_ path: String) -> Bool {
        var status = stat()
        return stat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFDIR
    }

    static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { fail("getcwd") }
        let directory = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path == "." ? directory : directory + "/" + path
    }

    static func writeFile(_ path: String, _ text: String) {
        let descriptor = open(path, O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else { fail("open \(path)") }
        defer { close(descriptor) }
        guard text.withCString({ write(descriptor, $0, strlen($0)) }) == text.utf8.count else { fail("write \(path)") }
    }

    /// mkdir -p; a directory that exists is fine.
    static func makeDirectories(_ path: String) {
        var prefix = ""
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST { fail("mkdir \(prefix)") }
        }
    }

    /// Every mount point at or under `root`, from /proc/self/mountinfo (field 5).
    static func mountPoints(under root: String) -> [String] {
        guard let file = fopen("/proc/self/mountinfo", "r") else { fail("reading /proc/self/mountinfo") }
        defer { fclose(file) }
        var points: [String] = []
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        while getline(&line, &capacity, file) > 0, let line {
            let fields = String(cString: line).split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 4 else { continue }
            // mountinfo escapes space, tab, newline and backslash as octal.
            let point = String(fields[4]).replacingOctalEscapes()
            if point == root || point.hasPrefix(root + "/") { points.append(point) }
        }
        free(line)
        return points
    }

    static func enter(arguments: [String] = CommandLine.arguments) {
        let writable = writableDirectories(arguments)
        // Inputs and further corpus directories: read, perhaps from the host's /tmp, which the sandbox replaces.
        let readable = arguments.dropFirst().filter { !$0.hasPrefix("-") }.map(absolute).filter { !writable.contains($0) }
        let workingDirectory = absolute(".")
        let uid = getuid(), gid = getgid()
        if swiftlet_fuzz_unshare(0) != 0 {
            check(swiftlet_fuzz_unshare(1), "unshare")
            writeFile("/proc/self/setgroups", "deny")
            writeFile("/proc/self/uid_map", "0 \(uid) 1")
            writeFile("/proc/self/gid_map", "0 \(gid) 1")
        }
        // Nothing done here may reach the host's mount table.
        check(mount(nil, "/", nil, UInt(MS_REC | MS_PRIVATE), nil), "making / private")
        // Held open (in this namespace: a bind source must be in it): the tmpfs staged over /tmp below may hide them (mktemp's corpus dir).
        let writableHandles = writable.map { directory -> Int32 in
            let handle = swiftlet_fuzz_open_path(directory, 1)
            if handle < 0 { fail("opening \(directory)") }
            return handle
        }
        let readableHandles = readable.map { path -> Int32 in
            let handle = swiftlet_fuzz_open_path(path, 0)
            if handle < 0 { fail("opening \(path)") }
            return handle
        }
        // The new root is staged on a tmpfs over /tmp (in this namespace only).
        check(mount("tmpfs", "/tmp", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=0755,size=16m"), "tmpfs on /tmp")
        let root = "/tmp/root"
        check(mkdir(root, 0o755), "mkdir \(root)")
        check(mount("/", root, nil, UInt(MS_BIND | MS_REC), nil), "binding / to \(root)")
        // Read-only, no devices, no setuid: every mount of the view (a bind is read-only per mount).
        for point in mountPoints(under: root).reversed() {
            let flags = UInt(MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV | MS_NOSUID)
            if mount(nil, point, nil, flags, nil) != 0 {
                // A mount we may not change (locked in a user namespace) is unreachable instead.
                if mount("tmpfs", point, "tmpfs", UInt(MS_RDONLY | MS_NODEV | MS_NOSUID), "size=4k") != 0 { fail("read-only remount of \(point)") }
            }
        }
        check(mount("tmpfs", root + "/tmp", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777,size=256m"), "tmpfs on the sandbox's /tmp")
        check(mount("tmpfs", root + "/dev", "tmpfs", UInt(MS_NOSUID), "mode=0755,size=4k"), "tmpfs on the sandbox's /dev")
        for device in ["null", "zero", "random", "urandom"] {
            let node = root + "/dev/" + device
            let created = open(node, O_CREAT | O_WRONLY | O_CLOEXEC, 0o666)
            guard created >= 0 else { fail("creating \(node)") }
            close(created)
            check(mount("/dev/" + device, node, nil, UInt(MS_BIND), nil), "binding /dev/\(device)")
        }
        for (directory, handle) in zip(writable, writableHandles) {
            // libFuzzer's outputs: writable, still without devices.
            makeDirectories(root + directory)
            check(mount("/proc/self/fd/\(handle)", root + directory, nil, UInt(MS_BIND | MS_NODEV | MS_NOSUID), nil), "binding \(directory) writable")
            close(handle)
        }
        for (path, handle) in zip(readable, readableHandles) {
            let target = root + path
            var status = stat()
            if stat(target, &status) != 0 {
                makeDirectories(String(target[..<(target.lastIndex(of: "/") ?? target.endIndex)]))
                if isDirectory("/proc/self/fd/\(handle)") {
                    makeDirectories(target)
                } else {
                    let created = open(target, O_CREAT | O_RDONLY | O_CLOEXEC, 0o444)
                    guard created >= 0 else { fail("creating \(target)") }
                    close(created)
                }
            }
            check(mount("/proc/self/fd/\(handle)", target, nil, UInt(MS_BIND), nil), "binding \(path)")
            check(mount(nil, target, nil, UInt(MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV | MS_NOSUID), nil), "read-only \(path)")
            close(handle)
        }
        check(chroot(root), "chroot \(root)")
        check(chdir(workingDirectory), "chdir \(workingDirectory)")
    }
}

extension String {
    /// Undoes mountinfo's `\\ooo` escapes.
    func replacingOctalEscapes() -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(self.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3,
               let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
