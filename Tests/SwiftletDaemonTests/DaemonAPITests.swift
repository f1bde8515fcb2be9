import Foundation
import SwiftletClient
@testable import SwiftletDaemon
import Testing

/// A real swiftletd refusing bad input: each refusal is a 4xx with a clear
/// message and leaves the stored definitions as they were. No guest boots.
@Suite("swiftletd bad input", .serialized)
struct BadInputTests {
    static func snapshot(_ daemon: DaemonHarness) throws -> [VMDefinition] {
        try daemon.client.list().map(\.definition)
    }

    func expectRefused(_ daemon: DaemonHarness, _ method: String, _ path: String, body: Data?, status: Int, mentions: String,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = try Self.snapshot(daemon)
        let response = try daemon.http.request(method, path, body: body)
        #expect(response.status == status, "\(method) \(path): \(response.status) \(response.text)", sourceLocation: sourceLocation)
        let message = try? SwiftletJSON.decoder.decode(APIErrorBody.self, from: response.body).error
        #expect(message?.contains(mentions) == true, "message: \(response.text)", sourceLocation: sourceLocation)
        #expect(try Self.snapshot(daemon) == before, "the database changed", sourceLocation: sourceLocation)
    }

    @Test("malformed JSON, unknown fields, duplicates, traversal names and oversized bodies get 4xx and change nothing")
    func refusals() throws {
        let daemon = try DaemonHarness(label: "bad")
        defer { daemon.tearDown() }
        let images = daemon.imagesDirectory
        _ = try daemon.client.define(VMDefinition(name: "web", kernel: images + "/vmlinux"))
        let vms = "/v1/vms"
        try expectRefused(daemon, "POST", vms, body: Data(#"{"name": "x", "kernel": "#.utf8), status: 400, mentions: "malformed JSON")
        try expectRefused(daemon, "POST", vms, body: Data("[1,2]".utf8), status: 400, mentions: "invalid definition")
        try expectRefused(daemon, "POST", vms, body: Data(), status: 400, mentions: "empty")
        try expectRefused(daemon, "POST", vms, body: Data(#"{"name":"x","kernel":"/k","vcpus":2}"#.utf8), status: 400, mentions: "unknown field 'vcpus'")
        try expectRefused(daemon, "POST", vms, body: Data(#"{"name":"x"}"#.utf8), status: 400, mentions: "kernel is missing")
        try expectRefused(daemon, "POST", vms, body: Data(#"{"name":"x","kernel":"/k","cpus":"two"}"#.utf8), status: 400, mentions: "cpus")
        try expectRefused(daemon, "POST", vms, body: Data(#"{"name":"web","kernel":"\#(images)/other"}"#.utf8), status: 409, mentions: "already defined")
        try expectRefused(daemon, "POST", vms, body: Data(#"{"name":"../../etc/passwd","kernel":"/k"}"#.utf8), status: 400, mentions: "invalid VM name")
        try expectRefused(daemon, "POST", vms, body: Data(#"{"name":"..","kernel":"/k"}"#.utf8), status: 400, mentions: "invalid VM name")
        try expectRefused(daemon, "GET", "/v1/vms/..%2F..%2Fetc", body: nil, status: 400, mentions: "invalid VM name")
        try expectRefused(daemon, "GET", "/v1/vms/nosuch", body: nil, status: 404, mentions: "swiftlet list --all")
        try expectRefused(daemon, "POST", "/v1/vms/nosuch/start", body: nil, status: 404, mentions: "no VM named 'nosuch'")
        try expectRefused(daemon, "POST", "/v1/vms/web/destroy", body: nil, status: 409, mentions: "not running")
        try expectRefused(daemon, "PUT", "/v1/vms/web", body: Data(#"{"name":"other","kernel":"/k"}"#.utf8), status: 400, mentions: "differs")
        let padding = String(repeating: "x", count: 200_000)
        try expectRefused(daemon, "POST", vms, body: Data(#"{"name":"big","kernel":"/k","cmdline":"\#(padding)"}"#.utf8), status: 413, mentions: "larger than")
        // The daemon is still healthy afterwards.
        #expect(try daemon.client.list().map(\.definition.name) == ["web"])
    }

    @Test("starting a VM whose kernel vanished is a 400 naming the file, and nothing changes")
    func vanishedKernel() throws {
        let daemon = try DaemonHarness(label: "vanished")
        defer { daemon.tearDown() }
        let kernel = daemon.imagesDirectory + "/kernel.elf"
        try Data([0x7f, 0x45, 0x4c, 0x46]).write(to: URL(fileURLWithPath: kernel))
        _ = try daemon.client.define(VMDefinition(name: "ghost", kernel: kernel))
        try FileManager.default.removeItem(atPath: kernel)
        try expectRefused(daemon, "POST", "/v1/vms/ghost/start", body: nil, status: 400, mentions: "'\(kernel)' does not exist")
        #expect(try daemon.client.get("ghost").pid == nil)
    }

    @Test("every documented route is served (answers other than the router's own 404)")
    func liveRoutes() throws {
        let daemon = try DaemonHarness(label: "routes")
        defer { daemon.tearDown() }
        for route in DaemonAPI.routes where route.path != "/v1/events" {
            let path = route.path.replacingOccurrences(of: ":name", with: "nosuch")
            let response = try daemon.http.request(route.method.rawValue, path, body: route.method == .get || route.method == .delete ? nil : Data("{}".utf8))
            let routerMiss = response.status == 404 && response.text.contains("no route")
            #expect(!routerMiss && response.status != 405, "\(route.method) \(path): \(response.status) \(response.text)")
        }
        let metrics = try daemon.client.metrics()
        #expect(metrics.contains("# TYPE swiftletd_vm_starts_total counter"))
        #expect(try daemon.client.version().cgroups.contains("not be applied"))
        // The socket is the daemon user's alone.
        var status = stat()
        #expect(stat(daemon.socket, &status) == 0 && status.st_mode & 0o777 == 0o600)
    }

    @Test("50 concurrent clients defining the same name: exactly one wins, the rest get 409")
    func concurrentDuplicates() async throws {
        let daemon = try DaemonHarness(label: "dup")
        defer { daemon.tearDown() }
        let client = daemon.client
        let statuses = await withTaskGroup(of: Int.self) { group in
            for index in 0..<50 {
                group.addTask {
                    let body = Data(#"{"name":"same","kernel":"\#(daemon.imagesDirectory)/k\#(index)"}"#.utf8)
                    return (try? client.http.request("POST", "/v1/vms", body: body).status) ?? -1
                }
            }
            return await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(statuses.filter { $0 == 201 }.count == 1, "\(statuses)")
        #expect(statuses.filter { $0 == 409 }.count == 49, "\(statuses)")
        #expect(try daemon.client.list().count == 1)
    }
}
