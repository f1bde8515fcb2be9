import Foundation
import GRDB
import SwiftletClient
@testable import SwiftletDaemon
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A stand-in swiftlet-vmm (Python) for snapshots: records every API call
/// (and its command line) as JSON lines in `calls.log` beside it, answers
/// `PUT /snapshot/create` on a paused VM by writing the two files, and
/// `PUT /snapshot/load` on an unconfigured VMM by checking them, with
/// Firecracker's 400 `{"fault_message"}` otherwise (also, as swiftlet-vmm
/// does, for a `--net` with `queues=` or `mtu=`). No guest, no KVM.
enum SnapshotFakeVMM {
    static let memoryBytes = 8192
    static let script = #"""
    #!/usr/bin/env python3
    import json, os, signal, socket, sys
    LOG = "@LOG@"
    if "--help" in sys.argv:
        print("usage: fake --api-sock PATH --kernel PATH"); sys.exit(0)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(4))
    args = sys.argv[1:]
    def record(entry):
        with open(LOG, "a") as f: f.write(json.dumps(entry) + "\n")
    record({"argv": args})
    path = args[args.index("--api-sock") + 1]
    state = "Running" if "--kernel" in args else "Not started"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path); server.listen(64)
    def answer(conn, status, body=b""):
        head = "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (status, len(body))
        conn.sendall(head.encode() + body)
    def fault(conn, message):
        answer(conn, "400 Bad Request", json.dumps({"fault_message": message}).encode())
    while True:
        conn, _ = server.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece: break
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length": length = int(value.strip())
        while len(body) < length:
            piece = conn.recv(65536)
            if not piece: break
            body += piece
        method, target = head.split(b"\r\n", 1)[0].decode(errors="replace").split(" ")[:2]
        request = json.loads(body) if body else None
        if target != "/": record({"method": method, "path": target, "body": request})
        if method == "GET" and target == "/":
            answer(conn, "200 OK", json.dumps({"state": state}).encode())
        elif method == "GET" and target == "/version":
            answer(conn, "200 OK", b'{"firecracker_version":"fake-1.0"}')
        elif method == "PATCH" and target == "/vm":
            state = "Paused" if request["state"] == "Paused" else "Running"
            answer(conn, "204 No Content")
        elif method == "PUT" and target == "/snapshot/create":
            if state != "Paused":
                fault(conn, "the microVM must be paused to take a snapshot")
            else:
                with open(request["snapshot_path"], "w") as f: f.write("FAKE-STATE")
                with open(request["mem_file_path"], "wb") as f: f.write(b"\x00" * @MEMORY@)
                answer(conn, "204 No Content")
        elif method == "PUT" and target == "/snapshot/load":
            snapshot, memory = request["snapshot_path"], request["mem_backend"]["backend_path"]
            if state != "Not started":
                fault(conn, "loading a snapshot is only allowed before the microVM is configured")
            elif not os.path.exists(snapshot) or open(snapshot).read() != "FAKE-STATE":
                fault(conn, "cannot read the snapshot state file " + snapshot)
            elif not os.path.exists(memory) or os.path.getsize(memory) != @MEMORY@:
                fault(conn, "bad memory file " + memory)
            else:
                state = "Running" if request.get("resume_vm") else "Paused"
                answer(conn, "204 No Content")
        else:
            answer(conn, "204 No Content")
        conn.close()
    """#

    /// Writes the fake into `folder`; its path, for `--vmm`.
    static func install(in folder: String) throws -> String {
        let path = folder + "/snapshot-fake-vmm"
        let text = script.replacingOccurrences(of: "@LOG@", with: folder + "/calls.log")
            .replacingOccurrences(of: "@MEMORY@", with: String(memoryBytes))
        // Close-on-exec: a process other tests spawn meanwhile must not inherit
        // the writable descriptor, which would make executing the fake fail
        // with ETXTBSY ("Text file busy") for as long as that process lives.
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        guard descriptor >= 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
        let bytes = Array(text.utf8)
        let written = write(descriptor, bytes, bytes.count)
        close(descriptor)
        guard written == bytes.count else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
        chmod(path, 0o755)
        return path
    }

    /// The recorded calls, in order: `argv` entries and `method`/`path`/`body` ones.
    static func calls(in folder: String) -> [[String: Any]] {
        let text = (try? String(contentsOfFile: folder + "/calls.log", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }
}

@Suite("swiftletd snapshots (fake VMM)", .serialized)
struct DaemonSnapshotTests {
    struct Setup {
        let daemon: DaemonHarness
        /// The fake VMM and its calls.log.
        let folder: String
        func tearDown() {
            daemon.tearDown()
            try? FileManager.default.removeItem(atPath: folder)
        }
        var images: String { daemon.imagesDirectory }
        var snapshots: String { daemon.stateDirectory + "/snapshots" }
        func calls() -> [[String: Any]] { SnapshotFakeVMM.calls(in: folder) }
        func apiCalls(_ path: String) -> [[String: Any]] { calls().filter { $0["path"] as? String == path } }
    }

    /// A daemon on the fake VMM (unjailed: the fake is a script, which a jail has no interpreter for)
    /// with VM `web`: a kernel, a writable 1 MiB disk and a NIC; started when `running`.
    static func setUp(_ label: String, disk readonly: Bool = false, running: Bool = true) throws -> Setup {
        let folder = NSTemporaryDirectory() + "swiftlet-snapfake-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let vmm = try SnapshotFakeVMM.install(in: folder)
        let daemon: DaemonHarness
        do { daemon = try DaemonHarness(label: label, extraArguments: ["--vmm", vmm, "--no-jail"]) } catch {
            try? FileManager.default.removeItem(atPath: folder)
            throw error
        }
        let setup = Setup(daemon: daemon, folder: folder)
        let images = daemon.imagesDirectory
        _ = FileManager.default.createFile(atPath: images + "/kernel", contents: Data("kernel".utf8))
        _ = FileManager.default.createFile(atPath: images + "/data.img", contents: Data(repeating: 0xAB, count: 1 << 20))
        let definition = VMDefinition(name: "web", memoryMiB: 64, kernel: images + "/kernel",
                                      disks: [.init(path: images + "/data.img", readonly: readonly)],
                                      nics: [.init(tap: "tap-web", mac: "52:54:00:12:34:56")])
        _ = try daemon.client.define(definition)
        if running { _ = try daemon.client.action("web", "start") }
        return setup
    }

    func expectError(_ daemon: DaemonHarness, _ method: String, _ path: String, body: String? = nil, status: Int, mentions: String,
                     sourceLocation: SourceLocation = #_sourceLocation) throws {
        let response = try daemon.http.request(method, path, body: body.map { Data($0.utf8) })
        let message = (try? SwiftletJSON.decoder.decode(APIErrorBody.self, from: response.body).error) ?? ""
        #expect(response.status == status && message.contains(mentions), "\(method) \(path): \(response.status) \(response.text)",
                sourceLocation: sourceLocation)
    }

    @Test("a snapshot pauses the VM, has the VMM write both files, resumes it, and is stored, listed and refused twice")
    func create() throws {
        let setup = try Self.setUp("snap-create")
        let daemon = setup.daemon
        defer { setup.tearDown() }
        let info = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1"))
        #expect(info.vm == "web" && info.name == "s1" && info.memoryBytes == SnapshotFakeVMM.memoryBytes && info.stateBytes == 10)
        #expect(info.diskBytes == [1 << 20] && info.vmmVersion == "fake-1.0")
        let folder = setup.snapshots + "/web/s1"
        #expect(info.path == folder)
        for file in ["state", "memory", "definition.json"] {
            #expect(FileManager.default.fileExists(atPath: folder + "/" + file), "\(file) missing")
        }
        var status = stat()
        #expect(stat(folder + "/memory", &status) == 0 && status.st_mode & 0o777 == 0o600)
        // Paused, created at the paths the (unjailed) VMM was given, resumed: in that order.
        let sequence = setup.calls().compactMap { call -> String? in
            guard let path = call["path"] as? String, path != "/version" else { return nil }
            return path == "/vm" ? (call["body"] as? [String: Any])?["state"] as? String : path
        }
        #expect(sequence == ["Paused", "/snapshot/create", "Resumed"], "\(sequence)")
        let body = try #require(setup.apiCalls("/snapshot/create").first?["body"] as? [String: Any])
        #expect(body["snapshot_type"] as? String == "Full")
        #expect(body["snapshot_path"] as? String == setup.snapshots + "/web/.s1.partial/state")
        #expect(body["mem_file_path"] as? String == setup.snapshots + "/web/.s1.partial/memory")
        #expect(try daemon.client.get("web").state == .running)

        #expect(try daemon.client.snapshots(of: "web").map(\.name) == ["s1"])
        #expect(try daemon.client.snapshots().map { "\($0.vm)/\($0.name)" } == ["web/s1"])
        try expectError(daemon, "POST", "/v1/vms/web/snapshots", body: #"{"name":"s1"}"#, status: 409, mentions: "already has a snapshot named 's1'")
        #expect(try daemon.client.snapshots().count == 1)

        // --pause leaves it paused; the definition at that time is kept beside the files.
        _ = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s2", after: .pause))
        #expect(try daemon.client.get("web").state == .paused)
        let saved = try SwiftletJSON.decoder.decode(VMDefinition.self, from: Data(contentsOf: URL(fileURLWithPath: setup.snapshots + "/web/s2/definition.json")))
        #expect(saved.name == "web" && saved.nics.first?.mac == "52:54:00:12:34:56")
        // A paused VM is snapshotted without a pause or resume, and stays paused.
        _ = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s3"))
        #expect(try daemon.client.get("web").state == .paused)
        // stop: destroyed afterwards.
        _ = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s4", after: .stop))
        #expect(try daemon.wait(for: "web", state: .shutOff).state == .shutOff)
        #expect(try daemon.client.snapshots(of: "web").map(\.name) == ["s1", "s2", "s3", "s4"])
        #expect(try daemon.client.metrics().contains("swiftletd_snapshots_total 4"))
    }

    @Test("a NIC with queues and mtu reaches the VMM's --net, and such a VM is snapshotted and restored with them")
    func multiqueueSnapshot() throws {
        let setup = try Self.setUp("snap-mq", running: false)
        let daemon = setup.daemon
        defer { setup.tearDown() }
        var definition = try daemon.client.get("web").definition
        definition.nics[0].queues = 2
        definition.nics[0].mtu = 9000
        _ = try daemon.client.update("web", json: SwiftletJSON.encoder().encode(definition))
        _ = try daemon.client.action("web", "start")
        let argv = try #require(setup.calls().compactMap { $0["argv"] as? [String] }.last { $0.contains("--api-sock") })
        #expect(DriverTests.values("--net", in: argv) == ["tap=tap-web,mac=52:54:00:12:34:56,queues=2,mtu=9000"], "\(argv)")
        _ = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1"))
        #expect(try daemon.client.get("web").state == .running)
        let saved = try SwiftletJSON.decoder.decode(VMDefinition.self, from: Data(contentsOf: URL(fileURLWithPath: setup.snapshots + "/web/s1/definition.json")))
        #expect(saved.nics.first?.queues == 2 && saved.nics.first?.mtu == 9000)
    }

    @Test("refusals: not running 409, bad names 400, unknown VM or snapshot 404, bad bodies 400; nothing is stored")
    func refusals() throws {
        let setup = try Self.setUp("snap-refuse", running: false)
        let daemon = setup.daemon
        defer { setup.tearDown() }
        try expectError(daemon, "POST", "/v1/vms/web/snapshots", body: #"{"name":"s1"}"#, status: 409, mentions: "running or paused")
        try expectError(daemon, "POST", "/v1/vms/web/snapshots", body: #"{"name":"../x"}"#, status: 400, mentions: "invalid snapshot name")
        try expectError(daemon, "POST", "/v1/vms/web/snapshots", body: #"{"name":".hidden"}"#, status: 400, mentions: "invalid snapshot name")
        try expectError(daemon, "POST", "/v1/vms/web/snapshots", body: #"{"name":""}"#, status: 400, mentions: "snapshot name is empty")
        try expectError(daemon, "POST", "/v1/vms/web/snapshots", body: #"{"name":"a","after":"later"}"#, status: 400, mentions: "after")
        try expectError(daemon, "POST", "/v1/vms/web/snapshots", body: #"{"nom":"a"}"#, status: 400, mentions: "unknown field 'nom'")
        try expectError(daemon, "POST", "/v1/vms/web/snapshots", status: 400, mentions: "empty")
        try expectError(daemon, "POST", "/v1/vms/nosuch/snapshots", body: #"{"name":"s1"}"#, status: 404, mentions: "no VM named")
        try expectError(daemon, "GET", "/v1/vms/..%2Fetc/snapshots", status: 400, mentions: "invalid VM name")
        try expectError(daemon, "DELETE", "/v1/vms/web/snapshots/nosuch", status: 404, mentions: "no snapshot named 'nosuch'")
        try expectError(daemon, "DELETE", "/v1/vms/web/snapshots/..", status: 400, mentions: "invalid snapshot name")
        try expectError(daemon, "POST", "/v1/snapshots/web/nosuch/restore", status: 404, mentions: "no snapshot named 'nosuch'")
        try expectError(daemon, "POST", "/v1/snapshots/web/s1/restore", body: #"{"as":"a/b"}"#, status: 400, mentions: "invalid VM name")
        try expectError(daemon, "POST", "/v1/snapshots/web/s1/restore", body: #"{"into":"x"}"#, status: 400, mentions: "unknown field 'into'")
        #expect(try daemon.client.snapshots().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: setup.snapshots + "/web"))
        #expect(setup.apiCalls("/snapshot/create").isEmpty)
    }

    @Test("delete removes the files and the row; undefine is refused while a VM has snapshots")
    func delete() throws {
        let setup = try Self.setUp("snap-delete")
        let daemon = setup.daemon
        defer { setup.tearDown() }
        _ = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1", after: .stop))
        #expect(try daemon.wait(for: "web", state: .shutOff).state == .shutOff)
        try expectError(daemon, "DELETE", "/v1/vms/web", status: 409, mentions: "has 1 snapshot")
        try daemon.client.deleteSnapshot(of: "web", "s1")
        #expect(!FileManager.default.fileExists(atPath: setup.snapshots + "/web/s1"))
        #expect(!FileManager.default.fileExists(atPath: setup.snapshots + "/web"))
        #expect(try daemon.client.snapshots().isEmpty)
        try expectError(daemon, "DELETE", "/v1/vms/web/snapshots/s1", status: 404, mentions: "no snapshot named 's1'")
        try daemon.client.undefine("web")
    }

    @Test("restore into the VM: refused while it runs (409); once stopped, a fresh VMM loads the snapshot's files and runs")
    func restoreInPlace() throws {
        let setup = try Self.setUp("snap-restore")
        let daemon = setup.daemon
        defer { setup.tearDown() }
        _ = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1"))
        try expectError(daemon, "POST", "/v1/snapshots/web/s1/restore", status: 409, mentions: "is running")
        #expect(setup.apiCalls("/snapshot/load").isEmpty)
        _ = try daemon.client.action("web", "destroy")
        let info = try daemon.client.restoreSnapshot(of: "web", "s1")
        #expect(info.state == .running && info.pid != nil, "\(info)")
        #expect(info.reason?.contains("restored from snapshot 's1'") == true)
        let load = try #require(setup.apiCalls("/snapshot/load").last?["body"] as? [String: Any])
        #expect(load["snapshot_path"] as? String == setup.snapshots + "/web/s1/state")
        let backend = load["mem_backend"] as? [String: Any]
        #expect(backend?["backend_type"] as? String == "File")
        #expect(backend?["backend_path"] as? String == setup.snapshots + "/web/s1/memory")
        #expect(load["resume_vm"] as? Bool == true)
        // The restoring VMM was not told to boot anything.
        let argv = try #require(setup.calls().last { $0["argv"] != nil }?["argv"] as? [String])
        #expect(!argv.contains("--kernel") && !argv.contains("--disk") && argv.contains("--api-sock"), "\(argv)")
        try expectError(daemon, "POST", "/v1/snapshots/web/s1/restore", status: 409, mentions: "is running")
    }

    @Test("a disk that changed size since the snapshot is refused at restore with a 409 naming both sizes")
    func diskResized() throws {
        let setup = try Self.setUp("snap-resize")
        let daemon = setup.daemon
        defer { setup.tearDown() }
        _ = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1", after: .stop))
        #expect(try daemon.wait(for: "web", state: .shutOff).state == .shutOff)
        #expect(truncate(setup.images + "/data.img", 2 << 20) == 0)
        try expectError(daemon, "POST", "/v1/snapshots/web/s1/restore", status: 409, mentions: "is 2097152 bytes now and was 1048576")
        #expect(setup.apiCalls("/snapshot/load").isEmpty)
    }

    @Test("restore --as: a new VM with a new MAC and uuid that shares the read-only disk and loads the same files; unjailed, writable disks are refused")
    func restoreAsClone() throws {
        let setup = try Self.setUp("snap-clone", disk: true)
        let daemon = setup.daemon
        defer { setup.tearDown() }
        _ = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1"))
        try expectError(daemon, "POST", "/v1/snapshots/web/s1/restore", body: #"{"as":"web"}"#, status: 409, mentions: "already exists")
        let clone = try daemon.client.restoreSnapshot(of: "web", "s1", as: "web2")
        #expect(clone.definition.name == "web2" && clone.state == .running)
        let original = try daemon.client.get("web").definition
        #expect(clone.definition.uuid != original.uuid)
        let mac = try #require(clone.definition.nics.first?.mac)
        #expect(mac != "52:54:00:12:34:56" && mac.hasPrefix("52:54:00:"))
        // The same disk, with the format it ran with made explicit (a path disk is raw unless it says otherwise).
        #expect(clone.definition.disks.map(\.path) == original.disks.map(\.path) && clone.definition.disks.allSatisfy { $0.readonly && $0.format == "raw" })
        #expect(clone.definition.nics.first?.tap == "tap-web")
        let load = try #require(setup.apiCalls("/snapshot/load").last?["body"] as? [String: Any])
        #expect(load["snapshot_path"] as? String == setup.snapshots + "/web/s1/state")
        #expect(try daemon.client.get("web").state == .running, "the original kept running")
        // The CLI: ambiguity needs --vm once two VMs have a snapshot of that name.
        _ = try daemon.client.createSnapshot(of: "web2", SnapshotRequest(name: "s1", after: .stop))
        let ambiguous = try daemon.cli(["restore", "s1", "--as", "web3"])
        #expect(ambiguous.status == 1 && ambiguous.stderr.contains("web, web2") && ambiguous.stderr.contains("--vm"), "\(ambiguous)")
        let listed = try daemon.cli(["snapshot-list"])
        #expect(listed.status == 0 && listed.stdout.contains("web2") && listed.stdout.contains("s1"), "\(listed)")

        // Writable disks: the unjailed clone would write to web's disk.
        let writable = try Self.setUp("snap-clone-rw")
        defer { writable.tearDown() }
        _ = try writable.daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1"))
        try expectError(writable.daemon, "POST", "/v1/snapshots/web/s1/restore", body: #"{"as":"web2"}"#, status: 409, mentions: "--no-jail")
        #expect(try writable.daemon.client.list().map(\.definition.name) == ["web"])
    }

    @Test("restore --as with taps: the clone's NICs get them and the load moves the restored NICs there (network_overrides); a wrong count, or taps without --as, is a 400")
    func restoreAsCloneWithTaps() throws {
        let setup = try Self.setUp("snap-taps", disk: true)
        let daemon = setup.daemon
        defer { setup.tearDown() }
        _ = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1"))
        try expectError(daemon, "POST", "/v1/snapshots/web/s1/restore", body: #"{"as":"web2","taps":["a","b"]}"#, status: 400, mentions: "has 1 NIC, but 2 taps")
        try expectError(daemon, "POST", "/v1/snapshots/web/s1/restore", body: #"{"taps":["tap-x"]}"#, status: 400, mentions: "to a new VM only")
        try expectError(daemon, "POST", "/v1/snapshots/web/s1/restore", body: #"{"as":"web2","taps":["bad tap!"]}"#, status: 400, mentions: "tap")
        #expect(try daemon.client.list().map(\.definition.name) == ["web"], "a refused restore left a VM")
        #expect(setup.apiCalls("/snapshot/load").isEmpty)

        let result = try daemon.cli(["restore", "s1", "--vm", "web", "--as", "web2", "--tap", "tap-web2"])
        #expect(result.status == 0, "\(result)")
        let clone = try daemon.client.get("web2")
        #expect(clone.state == .running && clone.definition.nics.map(\.tap) == ["tap-web2"])
        let load = try #require(setup.apiCalls("/snapshot/load").last?["body"] as? [String: Any])
        let overrides = load["network_overrides"] as? [[String: String]]
        #expect(overrides == [["iface_id": "net0", "host_dev_name": "tap-web2"]], "\(load)")
    }

    @Test("the CLI: snapshot, snapshot-list, restore, snapshot-delete, with exit statuses")
    func cli() throws {
        let setup = try Self.setUp("snap-cli")
        let daemon = setup.daemon
        defer { setup.tearDown() }
        let taken = try daemon.cli(["snapshot", "web", "s1", "--stop"])
        #expect(taken.status == 0 && taken.stdout.contains("snapshot s1 taken"), "\(taken)")
        #expect(try daemon.wait(for: "web", state: .shutOff).state == .shutOff)
        let again = try daemon.cli(["snapshot", "web", "s2"])
        #expect(again.status == 4 && again.stderr.contains("running or paused"), "\(again)")
        let both = try daemon.cli(["snapshot", "web", "s2", "--pause", "--stop"])
        #expect(both.status == 64, "\(both)")
        let listed = try daemon.cli(["snapshot-list", "web", "--json"])
        #expect(listed.status == 0 && listed.stdout.contains("\"name\" : \"s1\""), "\(listed)")
        let missing = try daemon.cli(["restore", "nosuch"])
        #expect(missing.status == 3 && missing.stderr.contains("no VM has a snapshot named 'nosuch'"), "\(missing)")
        let restored = try daemon.cli(["restore", "s1"])
        #expect(restored.status == 0 && restored.stdout.contains("web: restored from snapshot s1 of web"), "\(restored)")
        _ = try daemon.client.action("web", "destroy")
        let deleted = try daemon.cli(["snapshot-delete", "web", "s1"])
        #expect(deleted.status == 0, "\(deleted)")
        let gone = try daemon.cli(["snapshot-delete", "web", "s1"])
        #expect(gone.status == 3, "\(gone)")
        let help = try daemon.cli(["restore", "--help"])
        #expect(help.stdout.contains("--as") && help.stdout.contains("per VM"), "\(help)")
    }
}

@Suite("clone disk copies")
struct DiskCopyTests {
    @Test("a copy has the same bytes and size, zero blocks stay holes, and an existing target is refused")
    func copy() throws {
        let folder = NSTemporaryDirectory() + "swiftlet-diskcopy-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        var bytes = Data(count: 5 << 20)
        bytes[0] = 1
        bytes[(4 << 20) + 7] = 2
        bytes.append(Data(repeating: 3, count: 4096))
        try bytes.write(to: URL(fileURLWithPath: folder + "/source.img"))
        let method = try DiskCopy.copy(from: folder + "/source.img", to: folder + "/copy.img")
        #expect(try Data(contentsOf: URL(fileURLWithPath: folder + "/copy.img")) == bytes, "\(method)")
        #expect(throws: DiskCopy.Failure.self) { try DiskCopy.copy(from: folder + "/source.img", to: folder + "/copy.img") }
        #expect(try Data(contentsOf: URL(fileURLWithPath: folder + "/copy.img")) == bytes, "a refused copy changed the target")
        #expect(throws: DiskCopy.Failure.self) { try DiskCopy.copy(from: folder + "/nosuch.img", to: folder + "/other.img") }
        #expect(!FileManager.default.fileExists(atPath: folder + "/other.img"))
    }

    @Test("MACs for clones are unicast, locally administered, in 52:54:00")
    func macs() {
        for _ in 0..<20 {
            let mac = Supervisor.randomMAC()
            #expect(mac.hasPrefix("52:54:00:") && mac.count == 17)
        }
    }
}

@Suite("snapshot rows")
struct SnapshotStoreTests {
    @Test("a database from before snapshots gains the snapshot table and keeps its VMs; rows round-trip and duplicates are refused")
    func migration() throws {
        let path = NSTemporaryDirectory() + "swiftlet-snapstore-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        do {
            let old = try DatabasePool(path: path)
            try DefinitionStore.migrator.migrate(old, upTo: "v2: last run outcome")
            let json = String(decoding: try SwiftletJSON.encoder().encode(VMDefinition(name: "web", uuid: "u", kernel: "/k")), as: UTF8.self)
            try old.write { db in
                try db.execute(sql: "INSERT INTO vm (name, uuid, definition, createdAt, updatedAt) VALUES ('web', 'u', ?, 0, 0)", arguments: [json])
            }
        }
        let store = try DefinitionStore(path: path)
        #expect(try store.get("web")?.definition.kernel == "/k")
        let applied = try store.database.read { try DefinitionStore.migrator.appliedIdentifiers($0) }
        #expect(applied.contains("v3: snapshots") && applied.count == DefinitionStore.migrator.migrations.count)
        let row = DefinitionStore.SnapshotRow(vm: "web", name: "s1", createdAt: 12.5, stateBytes: 10, memoryBytes: 8192, diskBytes: [1, 2],
                                              vmmVersion: "1.0", definition: VMDefinition(name: "web", kernel: "/k"))
        try store.insertSnapshot(row)
        #expect(throws: DefinitionStore.Failure.self) { try store.insertSnapshot(row) }
        #expect(try store.snapshot(vm: "web", name: "s1") == row)
        #expect(try store.snapshots(of: "other").isEmpty)
        #expect(try store.snapshotCount(of: "web") == 1)
        try store.deleteSnapshot(vm: "web", name: "s1")
        #expect(try store.snapshots().isEmpty)
        #expect(throws: DefinitionStore.Failure.self) { try store.deleteSnapshot(vm: "web", name: "s1") }
    }
}

/// The snapshot routes through swiftlet-jailer: a static C stand-in VMM
/// (the jail has no interpreter for a script) that logs its calls to
/// `/calls.log` in its jail and checks, at load, the files as the jailed
/// VMM sees them. Needs root (the jailer) and a C compiler with a static libc.
enum StaticFakeVMM {
    static let source = #"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static char state[32];
static void record(const char *text) {
    FILE *file = fopen("/calls.log", "a");
    if (file) { fputs(text, file); fputc('\n', file); fclose(file); }
}
static int field(const char *body, const char *key, char *out, size_t size) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *p = strstr(body, pattern);
    if (!p) return 0;
    p += strlen(pattern);
    while (*p == ' ') p++;
    if (*p != '"') return 0;
    p++;
    size_t i = 0;
    while (*p && *p != '"' && i + 1 < size) out[i++] = *p++;
    out[i] = 0;
    return 1;
}
static void answer(int c, const char *status, const char *body) {
    char head[256];
    snprintf(head, sizeof head, "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n", status, strlen(body));
    // One write: the client may close as soon as it has the head of a 204.
    char reply[2048];
    snprintf(reply, sizeof reply, "%s%s", head, body);
    if (write(c, reply, strlen(reply)) < 0) return;
}
static void fault(int c, const char *message, const char *detail) {
    char body[1024];
    snprintf(body, sizeof body, "{\"fault_message\":\"%s %s\"}", message, detail);
    answer(c, "400 Bad Request", body);
}
static void stop(int signal) { (void)signal; _exit(4); }

int main(int argc, char **argv) {
    const char *socketPath = NULL;
    int kernel = 0;
    char line[4096] = "argv";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) { puts("usage: fake --api-sock PATH --kernel PATH"); return 0; }
        if (!strcmp(argv[i], "--api-sock") && i + 1 < argc) socketPath = argv[i + 1];
        if (!strcmp(argv[i], "--kernel")) kernel = 1;
        strncat(line, " ", sizeof line - strlen(line) - 1);
        strncat(line, argv[i], sizeof line - strlen(line) - 1);
    }
    if (!socketPath) return 1;
    signal(SIGTERM, stop);
    signal(SIGPIPE, SIG_IGN);
    strcpy(state, kernel ? "Running" : "Not started");
    record(line);
    int server = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address = {0};
    address.sun_family = AF_UNIX;
    strncpy(address.sun_path, socketPath, sizeof address.sun_path - 1);
    unlink(socketPath);
    if (bind(server, (struct sockaddr *)&address, sizeof address) != 0 || listen(server, 64) != 0) return 1;
    static char buffer[65536];
    for (;;) {
        int c = accept(server, NULL, NULL);
        if (c < 0) continue;
        size_t length = 0;
        buffer[0] = 0;
        char *end = NULL;
        while (!(end = strstr(buffer, "\r\n\r\n"))) {
            ssize_t count = read(c, buffer + length, sizeof buffer - 1 - length);
            if (count <= 0) break;
            length += (size_t)count;
            buffer[length] = 0;
        }
        if (!end) { close(c); continue; }
        char *body = end + 4;
        char *header = strcasestr(buffer, "content-length:");
        size_t wanted = header ? strtoul(header + 15, NULL, 10) : 0;
        while ((size_t)(buffer + length - body) < wanted) {
            ssize_t count = read(c, buffer + length, sizeof buffer - 1 - length);
            if (count <= 0) break;
            length += (size_t)count;
            buffer[length] = 0;
        }
        char method[16] = {0}, path[256] = {0};
        sscanf(buffer, "%15s %255s", method, path);
        if (strcmp(path, "/") != 0) {
            char entry[8192];
            snprintf(entry, sizeof entry, "%s %s %s", method, path, body);
            record(entry);
        }
        char a[1024], b[1024];
        if (!strcmp(method, "GET") && !strcmp(path, "/")) {
            char reply[64];
            snprintf(reply, sizeof reply, "{\"state\":\"%s\"}", state);
            answer(c, "200 OK", reply);
        } else if (!strcmp(method, "GET") && !strcmp(path, "/version")) {
            answer(c, "200 OK", "{\"firecracker_version\":\"fake-1.0\"}");
        } else if (!strcmp(method, "PATCH") && !strcmp(path, "/vm")) {
            strcpy(state, strstr(body, "Paused") ? "Paused" : "Running");
            answer(c, "204 No Content", "");
        } else if (!strcmp(method, "PUT") && !strcmp(path, "/snapshot/create")) {
            if (strcmp(state, "Paused") != 0) { fault(c, "the microVM must be paused", ""); close(c); continue; }
            if (!field(body, "snapshot_path", a, sizeof a) || !field(body, "mem_file_path", b, sizeof b)) { fault(c, "missing paths", ""); close(c); continue; }
            int s = open(a, O_WRONLY | O_CREAT | O_TRUNC, 0600), m = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (s < 0 || m < 0) { fault(c, "cannot create", strerror(errno)); close(c); continue; }
            static char zeroes[8192];
            if (write(s, "FAKE-STATE", 10) != 10 || write(m, zeroes, sizeof zeroes) != (ssize_t)sizeof zeroes) { fault(c, "cannot write", strerror(errno)); close(c); continue; }
            close(s); close(m);
            answer(c, "204 No Content", "");
        } else if (!strcmp(method, "PUT") && !strcmp(path, "/snapshot/load")) {
            char text[16] = {0};
            struct stat status;
            if (strcmp(state, "Not started") != 0) { fault(c, "only before configuration", ""); close(c); continue; }
            if (!field(body, "snapshot_path", a, sizeof a) || !field(body, "backend_path", b, sizeof b)) { fault(c, "missing paths", ""); close(c); continue; }
            int s = open(a, O_RDONLY);
            if (s < 0 || read(s, text, 10) != 10 || strcmp(text, "FAKE-STATE") != 0) { fault(c, "cannot read the state file", a); close(c); continue; }
            close(s);
            int m = open(b, O_RDONLY);
            if (m < 0 || fstat(m, &status) != 0 || status.st_size != 8192) { fault(c, "bad memory file", b); close(c); continue; }
            close(m);
            // A restored VM reopens its disks at the paths it had: /diskN in a jail.
            if (access("/disk0", F_OK) == 0 && access("/disk0", R_OK | W_OK) != 0) { fault(c, "cannot open /disk0", strerror(errno)); close(c); continue; }
            strcpy(state, strstr(body, "\"resume_vm\":true") || strstr(body, "\"resume_vm\" : true") ? "Running" : "Paused");
            answer(c, "204 No Content", "");
        } else {
            answer(c, "204 No Content", "");
        }
        close(c);
    }
}

"""#

    /// Compiles the fake into `folder`; its path.
    static func build(in folder: String) throws -> String {
        try source.write(toFile: folder + "/fake.c", atomically: true, encoding: .utf8)
        let binary = folder + "/swiftlet-vmm-fake"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["cc", "-static", "-O1", "-o", binary, folder + "/fake.c"]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestEnvironment.Failure(description: "cc -static failed for the fake VMM") }
        return binary
    }
}

@Suite("swiftletd snapshots, jailed (static fake VMM)", .serialized,
       .enabled(if: geteuid() == 0 && access("/usr/bin/cc", X_OK) == 0, "needs root (swiftlet-jailer) and cc"))
struct DaemonSnapshotJailTests {
    static func inode(_ path: String) -> ino_t? {
        var status = stat()
        return stat(path, &status) == 0 ? status.st_ino : nil
    }

    @Test("jailed: the VMM writes into its jail, the files move out; a clone gets its own disk at /disk0 and loads /snapshot/state and /snapshot/memory",
          .timeLimit(.minutes(2)))
    func jailedSnapshotAndClone() throws {
        let folder = NSTemporaryDirectory() + "swiftlet-cfake-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let vmm = try StaticFakeVMM.build(in: folder)
        let daemon = try DaemonHarness(label: "snap-jail", extraArguments: ["--vmm", vmm])
        defer { daemon.tearDown() }
        let images = daemon.imagesDirectory
        _ = FileManager.default.createFile(atPath: images + "/kernel", contents: Data("kernel".utf8))
        _ = FileManager.default.createFile(atPath: images + "/data.img", contents: Data(repeating: 0xAB, count: 1 << 20))
        _ = try daemon.client.define(VMDefinition(name: "web", memoryMiB: 64, kernel: images + "/kernel",
                                                  disks: [.init(path: images + "/data.img")], nics: [.init(tap: "tap-web", mac: "52:54:00:12:34:56")]))
        let started = try daemon.client.action("web", "start")
        #expect(started.state == .running, "\(started) \(daemon.log())")
        let jails = daemon.stateDirectory + "/jail/swiftlet-vmm-fake"
        func calls(_ vm: String) -> [String] {
            ((try? String(contentsOfFile: jails + "/" + vm + "/root/calls.log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }

        let info = try daemon.client.createSnapshot(of: "web", SnapshotRequest(name: "s1"))
        #expect(info.memoryBytes == 8192 && info.stateBytes == 10)
        let create = calls("web").first { $0.hasPrefix("PUT /snapshot/create") } ?? ""
        #expect(create.contains(#""snapshot_path":"/snapshot-s1/state""#) && create.contains(#""mem_file_path":"/snapshot-s1/memory""#), "\(calls("web"))")
        #expect(!FileManager.default.fileExists(atPath: jails + "/web/root/snapshot-s1"), "the jail's output folder is left")
        var status = stat()
        #expect(stat(info.path + "/memory", &status) == 0 && status.st_uid == geteuid() && status.st_mode & 0o777 == 0o600)

        let clone = try daemon.client.restoreSnapshot(of: "web", "s1", as: "web2")
        #expect(clone.state == .running, "\(clone) \(daemon.log())")
        let load = calls("web2").first { $0.hasPrefix("PUT /snapshot/load") } ?? ""
        #expect(load.contains(#""snapshot_path":"/snapshot/state""#) && load.contains(#""backend_path":"/snapshot/memory""#)
                && load.contains(#""resume_vm":true"#), "\(calls("web2"))")
        #expect(calls("web2").first?.contains("--kernel") == false, "the restoring VMM was given a kernel: \(calls("web2"))")
        // Its own disk: a copy beside the original, linked as the clone's /disk0.
        let copy = images + "/web2-data.img"
        #expect(clone.definition.disks.first?.path == copy)
        #expect(Self.inode(jails + "/web2/root/disk0") == Self.inode(copy))
        #expect(Self.inode(copy) != Self.inode(images + "/data.img"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == Data(repeating: 0xAB, count: 1 << 20))
        #expect(clone.definition.nics.first?.mac != "52:54:00:12:34:56")
        // The snapshot's files are readable by the jail's group, writable by nobody there.
        #expect(stat(jails + "/web2/root/snapshot/memory", &status) == 0 && status.st_gid == JailConfiguration.defaultGID
                && status.st_uid == geteuid() && status.st_mode & 0o777 == 0o440)

        // Into the VM itself, once stopped.
        _ = try daemon.client.action("web", "destroy")
        let restored = try daemon.client.restoreSnapshot(of: "web", "s1")
        #expect(restored.state == .running)
        #expect(calls("web").contains { $0.hasPrefix("PUT /snapshot/load") && $0.contains(#""snapshot_path":"/snapshot/state""#) }, "\(calls("web"))")
        #expect(Self.inode(jails + "/web/root/disk0") == Self.inode(images + "/data.img"))
    }
}
