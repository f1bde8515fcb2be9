import Foundation
import GRDB
import Logging
import SwiftletClient
@testable import SwiftletDaemon
import Testing
import Yams

@Suite("VM definitions: decoding and validation")
struct DefinitionTests {
    static func decode(_ json: String) throws -> VMDefinition {
        try SwiftletJSON.decoder.decode(VMDefinition.self, from: Data(json.utf8))
    }

    @Test("a minimal definition gets defaults and a UUID")
    func defaults() throws {
        let definition = try DefinitionValidator.validate(Self.decode(#"{"name":"web","kernel":"/k"}"#))
        #expect(definition.cpus == 1 && definition.memoryMiB == 128 && definition.console == "log" && definition.onReboot == "restart")
        #expect(definition.uuid.flatMap(UUID.init(uuidString:)) != nil)
    }

    @Test("an unknown field is refused with its name and the valid ones")
    func unknownField() throws {
        #expect {
            try Self.decode(#"{"name":"web","kernel":"/k","vcpus":2}"#)
        } throws: { error in
            SwiftletJSON.describe(error).contains("unknown field 'vcpus'") && SwiftletJSON.describe(error).contains("cpus")
        }
        #expect(throws: UnknownKeyError.self) { try Self.decode(#"{"name":"w","kernel":"/k","disks":[{"path":"/d","ro":true}]}"#) }
    }

    @Test("names: path separators, '..', bad characters and over-long names are refused", arguments: [
        "", "../etc", "a/b", "..", ".", ".hidden", "-x", "a b", "web\n", "é", String(repeating: "a", count: 65),
    ])
    func badNames(name: String) {
        #expect(throws: DaemonError.self) { try DefinitionValidator.validateName(name) }
    }

    @Test("names: letters, digits, dot, dash and underscore up to 64 bytes are accepted", arguments: [
        "web", "web-1", "db_2.test", "A", String(repeating: "a", count: 64),
    ])
    func goodNames(name: String) throws {
        try DefinitionValidator.validateName(name)
    }

    @Test("bad values name the field and what is valid", arguments: [
        (#"{"name":"w","kernel":"/k","cpus":0}"#, "cpus"),
        (#"{"name":"w","kernel":"/k","memory_mib":1}"#, "memory_mib"),
        (#"{"name":"w","kernel":"relative"}"#, "absolute"),
        (#"{"name":"w","kernel":"/k","console":"tty"}"#, "console"),
        (#"{"name":"w","kernel":"/k","on_reboot":"explode"}"#, "on_reboot"),
        (#"{"name":"w","kernel":"/k","nics":[{"tap":"tap0","mac":"zz"}]}"#, "mac"),
        (#"{"name":"w","kernel":"/k","nics":[{"tap":"a-very-long-interface-name"}]}"#, "tap"),
        (#"{"name":"w","kernel":"/k","disks":[{"path":"/a,b"}]}"#, "comma"),
        (#"{"name":"w","kernel":"/k","uuid":"nope"}"#, "uuid"),
        (#"{"name":"w","kernel":"/k","memory_mib":256,"limits":{"memory_mib":128}}"#, "limits.memory_mib"),
        (#"{"name":"w","kernel":"/k","cmdline":"a\nb"}"#, "control"),
    ])
    func badValues(json: String, mention: String) throws {
        let definition = try Self.decode(json)
        #expect {
            _ = try DefinitionValidator.validate(definition)
        } throws: { error in
            (error as? DaemonError)?.status == 400 && "\(error)".contains(mention)
        }
    }

    @Test("a YAML definition file decodes to the same definition as JSON")
    func yaml() throws {
        let yaml = """
            name: web
            cpus: 2
            memory_mib: 256
            kernel: /boot/vmlinux
            disks:
              - path: /var/lib/web.img
                readonly: true
            limits:
              cpu_percent: 50
            """
        let object = try Yams.load(yaml: yaml)
        let json = try JSONSerialization.data(withJSONObject: object as Any)
        let definition = try SwiftletJSON.decoder.decode(VMDefinition.self, from: json)
        #expect(definition.cpus == 2 && definition.disks == [.init(path: "/var/lib/web.img", readonly: true)] && definition.limits?.cpuPercent == 50)
    }
}

@Suite("Definition store (SQLite)")
struct StoreTests {
    static func temporaryPath() -> String {
        NSTemporaryDirectory() + "swiftlet-store-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sqlite"
    }

    @Test("definitions survive reopening the database, and a name is stored once")
    func persistence() throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let first = try DefinitionStore(path: path)
        let definition = try DefinitionValidator.validate(VMDefinition(name: "web", kernel: "/k", disks: [.init(path: "/d", id: "root")]))
        try first.insert(definition)
        #expect(throws: DefinitionStore.Failure.self) { try first.insert(definition) }
        try first.recordOutcome("web", state: .crashed, reason: "killed")
        let second = try DefinitionStore(path: path)
        let row = try #require(try second.get("web"))
        #expect(row.definition == definition)
        #expect(row.lastState == .crashed && row.lastReason == "killed")
        #expect(try second.count() == 1)
        try second.delete("web")
        #expect(try second.get("web") == nil)
        #expect(throws: DefinitionStore.Failure.self) { try second.delete("web") }
    }

    @Test("the migrations run in order and are recorded")
    func migrations() throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try DefinitionStore(path: path)
        let applied = try store.database.read { try DefinitionStore.migrator.appliedIdentifiers($0) }
        #expect(applied == ["v1: definitions", "v2: last run outcome", "v3: snapshots", "v4: networks and storage"])
        let columns = try store.database.read { try $0.columns(in: "vm").map(\.name) }
        #expect(columns.contains("lastState") && columns.contains("uuid"))
    }
}

@Suite("VMM exit status to VM state")
struct OutcomeTests {
    @Test("exit statuses and signals map to states with reasons", arguments: [
        (Int32(0) << 8, Supervisor.StopRequest?.none, VMState.shutOff, "powered off"),
        (Int32(2) << 8, nil, .shutOff, "rebooted"),
        (Int32(3) << 8, nil, .crashed, "crashed"),
        (Int32(4) << 8, .destroy, .shutOff, "destroyed"),
        (Int32(4) << 8, nil, .shutOff, "outside swiftletd"),
        (Int32(1) << 8, nil, .crashed, "status 1"),
        (SIGKILL, nil, .crashed, "SIGKILL"),
        (SIGKILL, .destroy, .shutOff, "destroyed"),
    ] as [(Int32, Supervisor.StopRequest?, VMState, String)])
    func mapping(status: Int32, request: Supervisor.StopRequest?, state: VMState, reason: String) {
        let (mapped, text) = SwiftletDriver.outcome(status: status, request: request, stderrTail: "")
        #expect(mapped == state)
        #expect(text.contains(reason), "\(text)")
    }
}

@Suite("cgroup v2 limits")
struct CgroupTests {
    @Test("limits become cpu.max and memory.max in the VM's own group, and the pid joins it")
    func writesLimits() throws {
        let root = NSTemporaryDirectory() + "swiftlet-cgroup-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try "cpuset cpu io memory pids\n".write(toFile: root + "/cgroup.controllers", atomically: true, encoding: .utf8)
        let manager = CgroupManager(root: root, logger: Logger(label: "test"))
        #expect(manager.available)
        let group = try #require(try manager.place(pid: 4242, name: "web", cpuPercent: 50, memoryMiB: 96))
        #expect(group == root + "/swiftlet/web")
        #expect(try String(contentsOfFile: group + "/cpu.max", encoding: .utf8) == "50000 100000")
        #expect(try String(contentsOfFile: group + "/memory.max", encoding: .utf8) == String(96 << 20))
        #expect(try String(contentsOfFile: group + "/cgroup.procs", encoding: .utf8) == "4242")
        #expect(try String(contentsOfFile: root + "/swiftlet/cgroup.subtree_control", encoding: .utf8).contains("+memory"))
    }

    @Test("without a v2 hierarchy the manager is off and says why")
    func unavailable() throws {
        let manager = CgroupManager(root: "/nonexistent-cgroup-root", logger: Logger(label: "test"))
        #expect(!manager.available)
        #expect(manager.warning?.contains("not be applied") == true)
        #expect(try manager.place(pid: 1, name: "web", cpuPercent: 10, memoryMiB: nil) == nil)
    }
}

@Suite("OpenAPI document")
struct OpenAPITests {
    static func documentedRoutes() throws -> Set<String> {
        let path = TestEnvironment.packageRoot.appendingPathComponent("docs/api/swiftletd-api.yaml").path
        let document = try #require(try Yams.load(yaml: String(contentsOfFile: path, encoding: .utf8)) as? [String: Any])
        let paths = try #require(document["paths"] as? [String: Any])
        var routes = Set<String>()
        for (path, item) in paths {
            let operations = try #require(item as? [String: Any])
            for method in operations.keys where ["get", "put", "post", "delete", "patch"].contains(method) {
                routes.insert("\(method.uppercased()) \(path)")
            }
        }
        return routes
    }

    @Test("the served routes are exactly the documented ones")
    func routesMatch() throws {
        let served = Set(DaemonAPI.routes.map { route in
            "\(route.method.rawValue) " + route.path.split(separator: "/").map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : String($0) }
                .reduce("") { $0 + "/" + $1 }
        })
        let documented = try Self.documentedRoutes()
        #expect(served.subtracting(documented).isEmpty, "served but not documented: \(served.subtracting(documented))")
        #expect(documented.subtracting(served).isEmpty, "documented but not served: \(documented.subtracting(served))")
    }
}
