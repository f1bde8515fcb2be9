import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import SwiftletClient
import SwiftletVersion

/// The REST API (docs/api/swiftletd-api.yaml) on Hummingbird. Every route
/// is registered from `DaemonAPI.routes`, which the OpenAPI test compares
/// with the document.
public struct DaemonAPI: Sendable {
    public struct Route: Sendable {
        public let method: HTTPRequest.Method
        /// Hummingbird form: `/v1/vms/:name`.
        public let path: String
        let handler: @Sendable (DaemonAPI, Request, BasicRequestContext) async throws -> Response
    }

    public static let maximumBodySize = 64 * 1024
    public static let version = SwiftletVersion.current

    let store: DefinitionStore
    let supervisor: Supervisor
    let logger: Logger
    /// Lifecycle actions, which may wait for a VMM (a shutdown up to 600 s).
    let actions: BlockingPool
    /// Database reads and writes, console tails, stats: short blocking work,
    /// kept apart so that waiting actions never hold up `list` or `get`.
    let queries: BlockingPool

    public init(store: DefinitionStore, supervisor: Supervisor, logger: Logger,
                actions: BlockingPool = BlockingPool(name: "actions", threads: 8, maximumQueued: 256),
                queries: BlockingPool = BlockingPool(name: "queries", threads: 4, maximumQueued: 1024)) {
        self.store = store
        self.supervisor = supervisor
        self.logger = logger
        self.actions = actions
        self.queries = queries
    }

    /// The longest `shutdown?wait=` (seconds).
    public static let maximumShutdownWait = 600
    /// The most `console?bytes=` returns (16 MiB).
    public static let maximumConsoleTail = 16 << 20

    /// Query parameters are checked strictly: a value that is not exactly
    /// what the document allows is a 400 naming it and the valid range.
    static func query(_ request: Request, _ name: String) -> String? {
        request.uri.queryParameters[Substring(name)].map(String.init)
    }

    static func wholeNumber(_ text: String, field: String, range: ClosedRange<Int>, unit: String) throws(DaemonError) -> Int {
        guard !text.isEmpty, text.utf8.count <= 10, text.unicodeScalars.allSatisfy({ ("0"..."9").contains($0) }),
              let value = Int(text), range.contains(value) else {
            throw .badRequest("invalid \(field) '\(DefinitionValidator.printable(text))': expected a whole number of \(unit) from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    static func shutdownOptions(_ request: Request) throws(DaemonError) -> (wait: Double, force: Bool) {
        let wait = try query(request, "wait").map { text throws(DaemonError) in
            try DaemonAPI.wholeNumber(text, field: "wait", range: 0...DaemonAPI.maximumShutdownWait, unit: "seconds")
        } ?? 0
        var force = false
        if let text = query(request, "force") {
            guard text == "true" || text == "false" else {
                throw .badRequest("invalid force '\(DefinitionValidator.printable(text))': expected true or false")
            }
            force = text == "true"
        }
        return (Double(wait), force)
    }

    // Every handler that touches the database, a VMM or a file runs its
    // blocking part on `queries` or `actions`, never on the request's task.
    public static let routes: [Route] = [
        Route(method: .get, path: "/v1/version") { api, _, _ in try api.json(api.versionInfo()) },
        Route(method: .get, path: "/v1/vms") { api, _, _ in try await api.queries.run { try api.json(api.list()) } },
        Route(method: .post, path: "/v1/vms") { api, request, _ in
            let definition = try await api.decodeDefinition(request)
            return try await api.queries.run { try api.json(api.define(definition), status: .created) }
        },
        Route(method: .get, path: "/v1/vms/:name") { api, _, context in
            let name = context.name
            return try await api.queries.run { try api.json(api.get(name)) }
        },
        Route(method: .put, path: "/v1/vms/:name") { api, request, context in
            let name = context.name
            let definition = try await api.decodeDefinition(request)
            return try await api.queries.run { try api.json(api.update(name, definition)) }
        },
        Route(method: .delete, path: "/v1/vms/:name") { api, _, context in
            let name = context.name
            return try await api.actions.run { try api.undefine(name); return Response(status: .noContent) }
        },
        Route(method: .post, path: "/v1/vms/:name/start") { api, _, context in
            try await api.action(context.name) { try api.supervisor.start(try api.row(context.name).definition) }
        },
        Route(method: .post, path: "/v1/vms/:name/shutdown") { api, request, context in
            let (wait, force) = try DaemonAPI.shutdownOptions(request)
            return try await api.action(context.name) { try api.supervisor.shutdown(context.name, wait: wait, force: force) }
        },
        Route(method: .post, path: "/v1/vms/:name/reboot") { api, _, context in
            try await api.action(context.name) { try api.supervisor.reboot(context.name) }
        },
        Route(method: .post, path: "/v1/vms/:name/destroy") { api, _, context in
            try await api.action(context.name) { try api.supervisor.destroy(context.name) }
        },
        Route(method: .post, path: "/v1/vms/:name/pause") { api, _, context in
            try await api.action(context.name) { try api.supervisor.pause(context.name) }
        },
        Route(method: .post, path: "/v1/vms/:name/resume") { api, _, context in
            try await api.action(context.name) { try api.supervisor.resume(context.name) }
        },
        Route(method: .get, path: "/v1/vms/:name/stats") { api, _, context in
            let name = context.name
            return try await api.queries.run {
                _ = try api.row(name)
                return try api.json(api.supervisor.stats(name))
            }
        },
        Route(method: .get, path: "/v1/vms/:name/console") { api, request, context in
            let name = context.name
            let bytes = try DaemonAPI.query(request, "bytes").map { text throws(DaemonError) in
                try DaemonAPI.wholeNumber(text, field: "bytes", range: 0...DaemonAPI.maximumConsoleTail, unit: "bytes")
            } ?? 65536
            return try await api.queries.run {
                _ = try api.row(name)
                return api.consoleTail(name, bytes: bytes)
            }
        },
        Route(method: .post, path: "/v1/vms/:name/agent") { api, request, context in
            try await api.agentPipe(request, name: context.name)
        },
        Route(method: .get, path: "/v1/vms/:name/snapshots") { api, _, context in
            let name = context.name
            return try await api.queries.run {
                _ = try api.row(name)
                return try api.json(api.snapshots(of: name))
            }
        },
        Route(method: .post, path: "/v1/vms/:name/snapshots") { api, request, context in
            let name = context.name
            let body = try await api.decodeBody(SnapshotRequest.self, request, what: "snapshot request", example: #"{"name": "before-upgrade"}"#)
            // Pausing, the VMM writing the guest's RAM, resuming: an action.
            return try await api.actions.run {
                _ = try api.row(name)
                let row = try api.supervisor.createSnapshot(of: name, body)
                return try api.json(api.supervisor.snapshotInfo(row), status: .created)
            }
        },
        Route(method: .delete, path: "/v1/vms/:name/snapshots/:snapshot") { api, _, context in
            let (name, snapshot) = (context.name, context.snapshot)
            return try await api.actions.run {
                try DefinitionValidator.validateName(name)
                try DefinitionValidator.validateName(snapshot, what: "snapshot")
                try api.supervisor.deleteSnapshot(vm: name, name: snapshot)
                return Response(status: .noContent)
            }
        },
        Route(method: .get, path: "/v1/snapshots") { api, _, _ in try await api.queries.run { try api.json(api.snapshots(of: nil)) } },
        Route(method: .post, path: "/v1/snapshots/:name/:snapshot/restore") { api, request, context in
            let (name, snapshot) = (context.name, context.snapshot)
            let body = try await api.decodeBody(RestoreRequest.self, request, what: "restore request", example: #"{"as": "web-clone"}"#, emptyIs: #"{}"#)
            // Disk copies and the new VMM's load: an action.
            return try await api.actions.run {
                let target = try api.supervisor.restoreSnapshot(vm: name, name: snapshot, as: body.as, taps: body.taps)
                return try api.json(api.get(target))
            }
        },
        Route(method: .get, path: "/v1/events") { api, _, _ in api.eventStream() },
        Route(method: .get, path: "/metrics") { api, _, _ in
            let text = try await api.queries.run { api.prometheusText() }
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4"
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        },
    ] + networkRoutes + storageRoutes

    /// The methods served on `path` (for 405's Allow), empty when no route's pattern matches it.
    static func allowedMethods(for path: String) -> [String] {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        return routes.filter { route in
            let pattern = route.path.split(separator: "/", omittingEmptySubsequences: false)
            guard pattern.count == segments.count else { return false }
            return zip(pattern, segments).allSatisfy { $0.hasPrefix(":") ? !$1.isEmpty : $0 == $1 }
        }.map(\.method.rawValue)
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: UnroutedRequests())
        for route in Self.routes {
            router.on(RouterPath(route.path), method: route.method) { request, context -> Response in
                do {
                    return try await route.handler(self, request, context)
                } catch {
                    let error = (error as? DaemonError) ?? .internal("\(error)")
                    if error.status >= 500 {
                        logger.error("request failed", metadata: ["method": "\(request.method)", "path": "\(request.uri.path)", "error": "\(error)"])
                    }
                    return Self.errorResponse(error)
                }
            }
        }
        return router
    }

    static func errorResponse(_ error: DaemonError) -> Response {
        let body = (try? SwiftletJSON.encoder().encode(APIErrorBody(error: error.description))) ?? Data()
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: HTTPResponse.Status(code: error.status), headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
    }

    func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws(DaemonError) -> Response {
        let data: Data
        do { data = try SwiftletJSON.encoder().encode(value) } catch { throw .internal("encoding the response: \(error)") }
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    // MARK: handlers

    func versionInfo() -> DaemonInfo {
        DaemonInfo(name: "swiftletd", version: Self.version, vmmBinary: supervisor.configuration.vmmBinary,
                   controlAPI: supervisor.vmmHasControlAPI, cgroups: supervisor.cgroups.summary, drivers: supervisor.driverInfo())
    }

    func row(_ name: String) throws(DaemonError) -> DefinitionStore.Row {
        try DefinitionValidator.validateName(name)
        let row: DefinitionStore.Row?
        do { row = try store.get(name) } catch { throw .internal("reading the database: \(error)") }
        guard let row else { throw .noSuchVM(name) }
        return row
    }

    func list() throws(DaemonError) -> [VMInfo] {
        do { return try store.all().map(supervisor.info(for:)) } catch { throw .internal("reading the database: \(error)") }
    }

    func get(_ name: String) throws(DaemonError) -> VMInfo { supervisor.info(for: try row(name)) }

    func snapshots(of vm: String?) throws(DaemonError) -> [SnapshotInfo] {
        do { return try store.snapshots(of: vm).map(supervisor.snapshotInfo) } catch { throw .internal("reading the database: \(error)") }
    }

    /// A small JSON body of type `T`; `emptyIs` stands in for an empty body (else one is a 400).
    func decodeBody<T: Decodable>(_ type: T.Type, _ request: Request, what: String, example: String, emptyIs: String? = nil) async throws(DaemonError) -> T {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: Self.maximumBodySize)
        } catch {
            throw .tooLarge("the request body is larger than \(Self.maximumBodySize) bytes")
        }
        var data = Data(buffer: buffer)
        if data.isEmpty {
            guard let emptyIs else { throw .badRequest("the request body is empty; send a \(what) as JSON, e.g. \(example)") }
            data = Data(emptyIs.utf8)
        }
        do {
            return try SwiftletJSON.decoder.decode(type, from: data)
        } catch {
            throw .badRequest("invalid \(what): \(SwiftletJSON.describe(error)); e.g. \(example)")
        }
    }

    func decodeDefinition(_ request: Request) async throws(DaemonError) -> VMDefinition {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: Self.maximumBodySize)
        } catch {
            throw .tooLarge("the request body is larger than \(Self.maximumBodySize) bytes")
        }
        guard buffer.readableBytes > 0 else { throw .badRequest("the request body is empty; send a VM definition as JSON") }
        do {
            return try SwiftletJSON.decoder.decode(VMDefinition.self, from: Data(buffer: buffer))
        } catch {
            throw .badRequest("invalid definition: \(SwiftletJSON.describe(error))")
        }
    }

    func define(_ decoded: VMDefinition) throws(DaemonError) -> VMInfo {
        var definition = try DefinitionValidator.validate(decoded)
        try assignMACs(&definition)
        _ = try supervisor.configuration.images.check(definition, mustExist: false)
        do {
            try store.insert(definition)
        } catch DefinitionStore.Failure.duplicate {
            throw .conflict("a VM named '\(definition.name)' (or with uuid \(definition.uuid ?? "")) is already defined; `swiftlet edit \(definition.name)` changes it")
        } catch {
            throw .internal("storing the definition: \(error)")
        }
        logger.info("defined", metadata: ["vm": "\(definition.name)", "uuid": "\(definition.uuid ?? "")"])
        return supervisor.info(for: DefinitionStore.Row(definition: definition))
    }

    func update(_ name: String, _ decoded: VMDefinition) throws(DaemonError) -> VMInfo {
        let existing = try row(name)
        var definition = decoded
        guard definition.name == name else {
            throw .badRequest("the definition's name '\(DefinitionValidator.printable(definition.name))' differs from '\(name)' in the URL; renaming is not supported")
        }
        if definition.uuid == nil { definition.uuid = existing.definition.uuid }
        guard definition.uuid?.lowercased() == existing.definition.uuid else {
            throw .badRequest("the uuid of '\(name)' cannot change (it is \(existing.definition.uuid ?? ""))")
        }
        definition = try DefinitionValidator.validate(definition)
        try assignMACs(&definition)
        _ = try supervisor.configuration.images.check(definition, mustExist: false)
        do { try store.replace(definition) } catch { throw .internal("storing the definition: \(error)") }
        logger.info("updated", metadata: ["vm": "\(name)"])
        var info = supervisor.info(for: DefinitionStore.Row(definition: definition, lastState: existing.lastState, lastReason: existing.lastReason))
        if supervisor.isActive(name) { info.reason = "the new definition takes effect at the next start" }
        return info
    }

    func undefine(_ name: String) throws(DaemonError) {
        _ = try row(name)
        // Its snapshots hold its definition and name it: they go first, deliberately.
        let snapshots: Int
        do { snapshots = try store.snapshotCount(of: name) } catch { throw .internal("reading the database: \(error)") }
        if snapshots > 0 {
            throw .conflict("VM '\(name)' has \(snapshots) snapshot\(snapshots == 1 ? "" : "s"); `swiftlet snapshot-list \(name)` lists them and `swiftlet snapshot-delete \(name) SNAPSHOT` deletes one, then undefine it")
        }
        // Claimed first, so that no start can begin while (or after) the definition goes.
        try supervisor.beginUndefine(name)
        do { try store.delete(name) } catch {
            supervisor.finishUndefine(name, deleted: false)
            throw .internal("deleting the definition: \(error)")
        }
        supervisor.finishUndefine(name, deleted: true)
        logger.info("undefined", metadata: ["vm": "\(name)"])
    }

    /// Runs a blocking lifecycle operation on the `actions` pool (never the
    /// request's task) and answers with the VM's info.
    func action(_ name: String, _ work: @escaping @Sendable () throws -> Void) async throws -> Response {
        try await actions.run {
            _ = try row(name)
            try work()
            return try json(get(name))
        }
    }

    func consoleTail(_ name: String, bytes: Int) -> Response {
        let path = supervisor.runDirectory(name).consoleLog
        var data = Data()
        if let handle = FileHandle(forReadingAtPath: path) {
            let size = (try? handle.seekToEnd()) ?? 0
            try? handle.seek(toOffset: size > UInt64(bytes) ? size - UInt64(bytes) : 0)
            data = handle.readDataToEndOfFile()
            try? handle.close()
        }
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; charset=utf-8"
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Newline-delimited JSON, one `VMEvent` per state change, chunked until
    /// the client goes. An empty line every 10 s finds clients that left.
    func eventStream() -> Response {
        let events = supervisor.events()
        let (lines, continuation) = AsyncStream<Data>.makeStream()
        let forward = Task {
            for await event in events {
                if let data = try? SwiftletJSON.encoder().encode(event) { continuation.yield(data + Data("\n".utf8)) }
            }
            continuation.finish()
        }
        let heartbeat = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(10))
                continuation.yield(Data("\n".utf8))
            }
        }
        continuation.onTermination = { _ in forward.cancel(); heartbeat.cancel() }
        var headers = HTTPFields()
        headers[.contentType] = "application/x-ndjson"
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            defer { forward.cancel(); heartbeat.cancel() }
            try await writer.write(ByteBuffer(string: "\n"))
            for await line in lines {
                try await writer.write(ByteBuffer(bytes: line))
            }
            try await writer.finish(nil)
        })
    }

    func prometheusText() -> String {
        var lines: [String] = []
        let rows = (try? store.all()) ?? []
        var byState: [VMState: Int] = [:]
        lines.append("# HELP swiftlet_vm_state 1 for the state the VM is in.")
        lines.append("# TYPE swiftlet_vm_state gauge")
        var perVM: [(String, VMInfo, VMStats?)] = []
        for row in rows {
            let info = supervisor.info(for: row)
            byState[info.state, default: 0] += 1
            perVM.append((row.definition.name, info, info.pid != nil ? supervisor.stats(row.definition.name) : nil))
            for state in VMState.allCases {
                lines.append("swiftlet_vm_state{name=\"\(row.definition.name)\",state=\"\(state.rawValue)\"} \(state == info.state ? 1 : 0)")
            }
        }
        lines.append("# HELP swiftlet_vm_info The VM's hypervisor driver (docs/drivers.md).")
        lines.append("# TYPE swiftlet_vm_info gauge")
        for (name, info, _) in perVM { lines.append("swiftlet_vm_info{name=\"\(name)\",hypervisor=\"\(info.definition.hypervisor)\"} 1") }
        lines.append("# HELP swiftlet_vm_vcpus Defined vCPUs.")
        lines.append("# TYPE swiftlet_vm_vcpus gauge")
        for (name, info, _) in perVM { lines.append("swiftlet_vm_vcpus{name=\"\(name)\"} \(info.definition.cpus)") }
        lines.append("# HELP swiftlet_vm_memory_bytes Defined guest memory.")
        lines.append("# TYPE swiftlet_vm_memory_bytes gauge")
        for (name, info, _) in perVM { lines.append("swiftlet_vm_memory_bytes{name=\"\(name)\"} \(info.definition.memoryMiB * 1_048_576)") }
        lines.append("# HELP swiftlet_vm_rss_bytes Resident memory of the VM's swiftlet-vmm process.")
        lines.append("# TYPE swiftlet_vm_rss_bytes gauge")
        for (name, _, stats) in perVM { if let rss = stats?.rssBytes { lines.append("swiftlet_vm_rss_bytes{name=\"\(name)\"} \(rss)") } }
        lines.append("# HELP swiftlet_vm_cpu_seconds_total CPU time of the VM's swiftlet-vmm process.")
        lines.append("# TYPE swiftlet_vm_cpu_seconds_total counter")
        for (name, _, stats) in perVM { if let cpu = stats?.cpuSeconds { lines.append("swiftlet_vm_cpu_seconds_total{name=\"\(name)\"} \(cpu)") } }
        lines.append("# HELP swiftlet_vmm_counter Counters from the VMM's control API (GET /metrics), by name.")
        lines.append("# TYPE swiftlet_vmm_counter gauge")
        for (name, _, stats) in perVM {
            for (counter, value) in (stats?.vmmMetrics ?? [:]).sorted(by: { $0.key < $1.key }) {
                lines.append("swiftlet_vmm_counter{name=\"\(name)\",counter=\"\(counter)\"} \(value)")
            }
        }
        lines.append("# HELP swiftletd_vms VMs by state.")
        lines.append("# TYPE swiftletd_vms gauge")
        for state in VMState.allCases { lines.append("swiftletd_vms{state=\"\(state.rawValue)\"} \(byState[state] ?? 0)") }
        let counters = supervisor.counterValues()
        lines.append("# HELP swiftletd_vm_starts_total VMM processes started.")
        lines.append("# TYPE swiftletd_vm_starts_total counter")
        lines.append("swiftletd_vm_starts_total \(counters["starts"] ?? 0)")
        lines.append("# HELP swiftletd_vm_crashes_total VM runs that ended as crashed.")
        lines.append("# TYPE swiftletd_vm_crashes_total counter")
        lines.append("swiftletd_vm_crashes_total \(counters["crashes"] ?? 0)")
        lines.append("# HELP swiftletd_snapshots_total Snapshots taken.")
        lines.append("# TYPE swiftletd_snapshots_total counter")
        lines.append("swiftletd_snapshots_total \(counters["snapshots"] ?? 0)")
        lines.append("# HELP swiftletd_restores_total Snapshots restored.")
        lines.append("# TYPE swiftletd_restores_total counter")
        lines.append("swiftletd_restores_total \(counters["restores"] ?? 0)")
        return lines.joined(separator: "\n") + "\n"
    }
}

extension BasicRequestContext {
    var name: String { parameters.get("name") ?? "" }
    var snapshot: String { parameters.get("snapshot") ?? "" }
    var volume: String { parameters.get("volume") ?? "" }
}

/// Requests no route takes: 405 with `Allow` when the path exists under
/// other methods (TRACE, a PATCH on a VM), else 404; both `{"error": ...}`.
struct UnroutedRequests: RouterMiddleware {
    typealias Context = BasicRequestContext
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            let allowed = DaemonAPI.allowedMethods(for: request.uri.path)
            guard !allowed.isEmpty else {
                return DaemonAPI.errorResponse(.notFound("no route \(DefinitionValidator.printable(request.uri.path)); docs/api/swiftletd-api.yaml lists the routes"))
            }
            var response = DaemonAPI.errorResponse(.methodNotAllowed(
                "\(DefinitionValidator.printable(request.method.rawValue)) is not allowed on \(DefinitionValidator.printable(request.uri.path)); allowed: \(allowed.joined(separator: ", "))"))
            response.headers[.allow] = allowed.joined(separator: ", ")
            return response
        }
    }
}
