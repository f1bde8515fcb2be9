import Foundation
import Logging
import SwiftletClient
@testable import SwiftletDaemon
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A stand-in swiftlet-vmm (Python): serves the control API's few routes on
/// `--api-sock`; `PUT /actions` ends the process without an answer when the
/// kernel's name contains "exits", as a VMM whose guest powers off during a
/// reboot does, and is accepted (the process stays) otherwise. No guest, no KVM.
enum FakeVMM {
    static let script = #"""
    #!/usr/bin/env python3
    import os, signal, socket, sys
    if "--help" in sys.argv:
        print("usage: fake --api-sock PATH --kernel PATH"); sys.exit(0)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(4))
    args = sys.argv[1:]
    path = args[args.index("--api-sock") + 1]
    exits = "exits" in args[args.index("--kernel") + 1]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path); server.listen(64)
    def answer(conn, status, body=b""):
        head = "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (status, len(body))
        conn.sendall(head.encode() + body)
    while True:
        conn, _ = server.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece: break
            data += piece
        line = data.split(b"\r\n", 1)[0].decode(errors="replace")
        if line.startswith("GET / "): answer(conn, "200 OK", b'{"state":"Running"}')
        elif line.startswith("GET /metrics"): answer(conn, "200 OK", b"{}")
        elif line.startswith("PUT /actions") and exits: os._exit(0)
        else: answer(conn, "204 No Content")
        conn.close()
    """#

    /// Writes the fake VMM into `folder`; its path, for `--vmm`.
    static func install(in folder: String) throws -> String {
        let path = folder + "/fake-vmm"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }
}

final class Counter: Sendable { let value = Mutex(0) }

/// Threads of a process, from /proc.
func threadCount(_ pid: pid_t) -> Int {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    for line in status.split(separator: "\n") where line.hasPrefix("Threads:") {
        return Int(line.split(whereSeparator: \.isWhitespace).last ?? "") ?? 0
    }
    return 0
}

/// The daemon's own boundaries (issue 10, items 7, 8 and 10): its socket
/// path, image folders, query parameters, unrouted methods, blocking work
/// and lifecycle races. No guest boots.
@Suite("swiftletd hardening", .serialized)
struct DaemonHardeningTests {
    func expectError(_ daemon: DaemonHarness, _ method: String, _ path: String, body: Data? = nil, status: Int, mentions: String,
                     sourceLocation: SourceLocation = #_sourceLocation) throws {
        let response = try daemon.http.request(method, path, body: body)
        let message = (try? SwiftletJSON.decoder.decode(APIErrorBody.self, from: response.body).error) ?? ""
        #expect(response.status == status && message.contains(mentions), "\(method) \(path): \(response.status) \(response.text)",
                sourceLocation: sourceLocation)
    }

    @Test("a file that is not a socket at --socket is left alone and the daemon refuses to start with one line naming it")
    func socketPathIsAFile() throws {
        let folder = NSTemporaryDirectory() + "swiftletd-socket-file-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let precious = folder + "/precious.txt"
        try "keep me\n".write(toFile: precious, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestEnvironment.binary("swiftletd"))
        process.arguments = ["--state-dir", folder + "/state", "--socket", precious, "--vmm", "/bin/true", "--cgroup-root", folder + "/no-cgroup", "--no-default-network"]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // A daemon that took the path would serve forever: stop it after a while and fail below.
        let watchdog = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 15, execute: watchdog)
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        watchdog.cancel()
        #expect(process.terminationReason == .exit && process.terminationStatus != 0, "swiftletd started on a regular file")
        #expect(message.contains(precious) && message.contains("not a socket"), "\(message)")
        #expect(try String(contentsOfFile: precious, encoding: .utf8) == "keep me\n", "the file at --socket was removed")
    }

    @Test("a stale socket (nobody listening) at --socket is replaced")
    func staleSocketReplaced() throws {
        let daemon = try DaemonHarness(label: "stale")
        defer { daemon.tearDown() }
        daemon.stop(signal: SIGKILL)
        var status = stat()
        #expect(lstat(daemon.socket, &status) == 0 && status.st_mode & S_IFMT == S_IFSOCK, "the killed daemon's socket should remain")
        try daemon.start()
        #expect(try daemon.client.list().isEmpty)
    }

    @Test("images outside the image folders, reached through a link or '..', or device nodes are refused with a 400 naming the path and the allowed folders")
    func imageDirectories() throws {
        let daemon = try DaemonHarness(label: "images")
        defer { daemon.tearDown() }
        let images = daemon.imagesDirectory
        try "secret".write(toFile: daemon.directory + "/outside.img", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: images + "/link.img", withDestinationPath: daemon.directory + "/outside.img")
        #expect(mknod(images + "/null", S_IFCHR | 0o600, dev_t(1 << 8 | 3)) == 0)
        func define(_ json: String) -> Data { Data(json.utf8) }
        try expectError(daemon, "POST", "/v1/vms", body: define(#"{"name":"a","kernel":"/etc/passwd"}"#), status: 400, mentions: "outside the image directories")
        try expectError(daemon, "POST", "/v1/vms", body: define(#"{"name":"a","kernel":"/etc/passwd"}"#), status: 400, mentions: images)
        try expectError(daemon, "POST", "/v1/vms", body: define(#"{"name":"a","kernel":"\#(images)/../../outside.img"}"#), status: 400,
                        mentions: "resolves to \(daemon.directory)/outside.img")
        try expectError(daemon, "POST", "/v1/vms", body: define(#"{"name":"a","kernel":"\#(images)/k","disks":[{"path":"\#(images)/link.img"}]}"#),
                        status: 400, mentions: "disks[0].path '\(images)/link.img' (resolves to")
        try expectError(daemon, "POST", "/v1/vms", body: define(#"{"name":"a","kernel":"\#(images)/k","initrd":"\#(images)/null"}"#), status: 400,
                        mentions: "device node")
        try FileManager.default.createDirectory(atPath: images + "/folder", withIntermediateDirectories: true)
        try expectError(daemon, "POST", "/v1/vms", body: define(#"{"name":"a","kernel":"\#(images)/folder"}"#), status: 400, mentions: "not a regular file")
        #expect(try daemon.client.list().isEmpty)
        // Inside the folder (existing or not yet copied there) is fine; a link swapped in later is caught at start.
        _ = try daemon.client.define(VMDefinition(name: "ok", kernel: images + "/later.elf"))
        try FileManager.default.createSymbolicLink(atPath: images + "/later.elf", withDestinationPath: "/etc/passwd")
        try expectError(daemon, "POST", "/v1/vms/ok/start", status: 400, mentions: "resolves to /etc/passwd")
        #expect(try daemon.client.get("ok").pid == nil)
    }

    @Test("out-of-range or malformed wait, force and bytes are refused with 400 naming the value and the valid range", arguments: [
        ("shutdown?wait=601", "wait"), ("shutdown?wait=1e9", "wait"), ("shutdown?wait=-5", "wait"), ("shutdown?wait=abc", "wait"),
        ("shutdown?wait=", "wait"), ("shutdown?force=maybe", "force"), ("console?bytes=-1", "bytes"), ("console?bytes=abc", "bytes"),
        ("console?bytes=16777217", "bytes"),
    ])
    func queryParameters(query: String, field: String) throws {
        let daemon = try DaemonHarness(label: "query")
        defer { daemon.tearDown() }
        _ = try daemon.client.define(VMDefinition(name: "web", kernel: daemon.imagesDirectory + "/k"))
        let method = query.hasPrefix("console") ? "GET" : "POST"
        try expectError(daemon, method, "/v1/vms/web/" + query, status: 400, mentions: "invalid \(field)")
    }

    @Test("valid wait, force and bytes are accepted")
    func validQueryParameters() throws {
        let daemon = try DaemonHarness(label: "query-ok")
        defer { daemon.tearDown() }
        _ = try daemon.client.define(VMDefinition(name: "web", kernel: daemon.imagesDirectory + "/k"))
        #expect(try daemon.http.request("GET", "/v1/vms/web/console?bytes=16777216").status == 200)
        #expect(try daemon.http.request("GET", "/v1/vms/web/console?bytes=0").status == 200)
        // Not running: the query is fine, the state is the conflict.
        try expectError(daemon, "POST", "/v1/vms/web/shutdown?wait=600&force=true", status: 409, mentions: "not running")
        try expectError(daemon, "POST", "/v1/vms/web/shutdown?wait=0&force=false", status: 409, mentions: "not running")
    }

    @Test("a method a route does not serve (TRACE, PATCH) is 405 with Allow; an unknown path is 404")
    func methodNotAllowed() throws {
        let daemon = try DaemonHarness(label: "405")
        defer { daemon.tearDown() }
        var response = try daemon.http.request("TRACE", "/v1/vms")
        #expect(response.status == 405 && response.headers["allow"] == "GET, POST", "\(response.status) \(response.headers)")
        response = try daemon.http.request("PATCH", "/v1/vms/web")
        #expect(response.status == 405 && response.headers["allow"] == "GET, PUT, DELETE", "\(response.status) \(response.headers)")
        response = try daemon.http.request("GET", "/v1/vms/web/start")
        #expect(response.status == 405 && response.headers["allow"] == "POST")
        try expectError(daemon, "GET", "/v1/nothing", status: 404, mentions: "no route")
    }

    @Test("a VM that ends during reboot, pause or shutdown is a 409 saying so, not a 500", arguments: ["reboot", "shutdown"])
    func vmEndsDuringAction(verb: String) throws {
        let scratch = NSTemporaryDirectory() + "fake-vmm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let daemon = try DaemonHarness(label: "ends", extraArguments: ["--no-jail", "--vmm", try FakeVMM.install(in: scratch)])
        defer { daemon.tearDown() }
        let kernel = daemon.imagesDirectory + "/exits.elf"
        try "x".write(toFile: kernel, atomically: true, encoding: .utf8)
        _ = try daemon.client.define(VMDefinition(name: "brief", kernel: kernel))
        let started = try daemon.client.action("brief", "start")
        #expect(started.state == .running && started.controlAPI, "\(started)")
        try expectError(daemon, "POST", "/v1/vms/brief/\(verb)", status: 409, mentions: "ended while it was being")
        #expect(try daemon.wait(for: "brief", state: .shutOff, seconds: 10).pid == nil)
    }

    @Test("concurrent slow actions run on a bounded set of threads, and the API stays responsive meanwhile", .timeLimit(.minutes(2)))
    func boundedThreads() async throws {
        let scratch = NSTemporaryDirectory() + "fake-vmm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let daemon = try DaemonHarness(label: "pool", extraArguments: ["--no-jail", "--vmm", try FakeVMM.install(in: scratch)])
        defer { daemon.tearDown() }
        let kernel = daemon.imagesDirectory + "/stays.elf"
        try "x".write(toFile: kernel, atomically: true, encoding: .utf8)
        _ = try daemon.client.define(VMDefinition(name: "slow", kernel: kernel))
        _ = try daemon.client.action("slow", "start")
        let daemonPID = try #require(daemon.pid)
        let before = threadCount(daemonPID)
        // The fake VMM accepts Shutdown but never powers off: each request waits its 3 s.
        let requests = 40
        let socket = daemon.socket
        let finished = Counter()
        // Threads, not tasks: the blocking client on the cooperative pool would send only a couple at a time.
        for _ in 0..<requests {
            Thread {
                _ = try? UnixHTTPClient(socketPath: socket, timeout: 120).request("POST", "/v1/vms/slow/shutdown?wait=3")
                finished.value.withLock { $0 += 1 }
            }.start()
        }
        var most = before
        var answered = 0
        while finished.value.withLock({ $0 }) < requests {
            most = max(most, threadCount(daemonPID))
            // Listing VMs needs the database: it must not wait behind the shutdowns.
            if (try? UnixHTTPClient(socketPath: socket, timeout: 30).request("GET", "/v1/vms").status) == 200 { answered += 1 }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(most - before <= 16, "the daemon grew from \(before) to \(most) threads for \(requests) waiting requests")
        #expect(answered > 0)
    }
}

/// Undefine against start, in process: the two are serialized per VM.
@Suite("swiftletd lifecycle serialization")
struct LifecycleSerializationTests {
    static func makeAPI() throws -> (DaemonAPI, Supervisor, String) {
        let folder = NSTemporaryDirectory() + "swiftletd-serial-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder + "/images", withIntermediateDirectories: true)
        let store = try DefinitionStore(path: folder + "/db.sqlite")
        let logger = Logger(label: "test")
        let images = try ImagePolicy(directories: [folder + "/images"], allowDeviceNodes: false)
        let supervisor = Supervisor(configuration: SupervisorConfiguration(stateDirectory: folder, vmmBinary: "/bin/true", images: images),
                                    store: store, cgroups: CgroupManager(root: folder + "/no-cgroup", logger: logger), logger: logger)
        return (DaemonAPI(store: store, supervisor: supervisor, logger: logger), supervisor, folder)
    }

    @Test("undefine while the VM is starting is refused (409) and the definition stays")
    func undefineWhileStarting() throws {
        let (api, supervisor, folder) = try Self.makeAPI()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        _ = try api.define(VMDefinition(name: "web", kernel: folder + "/images/k"))
        // The window between a start's claim and its VMM's pid being known.
        supervisor.runtimes.withLock { $0["web"] = Supervisor.Runtime(state: .starting) }
        #expect { try api.undefine("web") } throws: { ($0 as? DaemonError)?.status == 409 }
        #expect(try api.store.get("web") != nil)
    }

    @Test("a start after the definition was deleted is refused and spawns nothing")
    func startAfterUndefine() throws {
        let (api, supervisor, folder) = try Self.makeAPI()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let definition = try api.define(VMDefinition(name: "web", kernel: folder + "/images/k")).definition
        try api.undefine("web")
        // A start that read the definition before the undefine finished.
        #expect { try supervisor.start(definition) } throws: { ($0 as? DaemonError)?.status == 404 }
        #expect(supervisor.runtime("web").pid == nil)
    }
}
