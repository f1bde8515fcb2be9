import Foundation

/// The typed REST client for swiftletd (the `swiftlet` CLI's side of
/// docs/api/swiftletd-api.yaml).
public struct SwiftletAPIClient: Sendable {
    public static let defaultSocket = "/run/swiftlet/swiftletd.sock"
    public let http: UnixHTTPClient

    public init(socketPath: String, timeout: Double = 60) {
        http = UnixHTTPClient(socketPath: socketPath, timeout: timeout)
    }

    /// An error from the daemon (status and its message) or from reaching it.
    public enum Failure: Error, CustomStringConvertible {
        case api(status: Int, message: String)
        case unreachable(socket: String, cause: String)
        case badResponse(String)

        public var description: String {
            switch self {
            case .api(_, let message): return message
            case .unreachable(let socket, let cause):
                return "swiftletd is not reachable at \(socket) (\(cause)); start it with `swiftletd`, or point --socket / SWIFTLET_SOCKET at its socket"
            case .badResponse(let what): return "unexpected answer from swiftletd: \(what)"
            }
        }
    }

    func call(_ method: String, _ path: String, body: Data? = nil) throws -> UnixHTTPClient.Response {
        let response: UnixHTTPClient.Response
        do {
            response = try http.request(method, path, body: body)
        } catch let failure as UnixHTTPClient.Failure {
            throw Failure.unreachable(socket: http.socketPath, cause: failure.description)
        }
        guard (200..<300).contains(response.status) else {
            let message = (try? SwiftletJSON.decoder.decode(APIErrorBody.self, from: response.body).error)
                ?? "HTTP \(response.status): \(response.text)"
            throw Failure.api(status: response.status, message: message)
        }
        return response
    }

    func decode<T: Decodable>(_ type: T.Type, _ response: UnixHTTPClient.Response) throws -> T {
        do { return try SwiftletJSON.decoder.decode(type, from: response.body) } catch {
            throw Failure.badResponse(SwiftletJSON.describe(error))
        }
    }

    static func escape(_ name: String) -> String {
        name.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? name
    }

    public func version() throws -> DaemonInfo { try decode(DaemonInfo.self, call("GET", "/v1/version")) }
    public func list() throws -> [VMInfo] { try decode([VMInfo].self, call("GET", "/v1/vms")) }
    public func get(_ name: String) throws -> VMInfo { try decode(VMInfo.self, call("GET", "/v1/vms/\(Self.escape(name))")) }

    /// Defines a VM from raw JSON (so that the daemon checks every field).
    public func define(json: Data) throws -> VMInfo { try decode(VMInfo.self, call("POST", "/v1/vms", body: json)) }
    public func define(_ definition: VMDefinition) throws -> VMInfo {
        try define(json: SwiftletJSON.encoder().encode(definition))
    }
    public func update(_ name: String, json: Data) throws -> VMInfo {
        try decode(VMInfo.self, call("PUT", "/v1/vms/\(Self.escape(name))", body: json))
    }
    public func undefine(_ name: String) throws { _ = try call("DELETE", "/v1/vms/\(Self.escape(name))") }

    /// start, shutdown, reboot, destroy, pause, resume.
    public func action(_ name: String, _ verb: String, query: String = "") throws -> VMInfo {
        try decode(VMInfo.self, call("POST", "/v1/vms/\(Self.escape(name))/\(verb)" + (query.isEmpty ? "" : "?" + query)))
    }
    public func stats(_ name: String) throws -> VMStats { try decode(VMStats.self, call("GET", "/v1/vms/\(Self.escape(name))/stats")) }
    public func consoleLog(_ name: String, bytes: Int = 65536) throws -> Data {
        try call("GET", "/v1/vms/\(Self.escape(name))/console?bytes=\(bytes)").body
    }
    public func metrics() throws -> String { try call("GET", "/metrics").text }

    /// Snapshots of one VM, or of every VM.
    public func snapshots(of vm: String? = nil) throws -> [SnapshotInfo] {
        try decode([SnapshotInfo].self, call("GET", vm.map { "/v1/vms/\(Self.escape($0))/snapshots" } ?? "/v1/snapshots"))
    }
    public func createSnapshot(of vm: String, _ request: SnapshotRequest) throws -> SnapshotInfo {
        try decode(SnapshotInfo.self, call("POST", "/v1/vms/\(Self.escape(vm))/snapshots", body: SwiftletJSON.encoder().encode(request)))
    }
    public func deleteSnapshot(of vm: String, _ name: String) throws {
        _ = try call("DELETE", "/v1/vms/\(Self.escape(vm))/snapshots/\(Self.escape(name))")
    }
    /// Restores into `vm` itself, or with `as` into a new VM; the VM now running.
    /// `taps`: a clone's taps, one per NIC (default: the original's).
    public func restoreSnapshot(of vm: String, _ name: String, as clone: String? = nil, taps: [String]? = nil) throws -> VMInfo {
        try decode(VMInfo.self, call("POST", "/v1/snapshots/\(Self.escape(vm))/\(Self.escape(name))/restore",
                                     body: SwiftletJSON.encoder().encode(RestoreRequest(as: clone, taps: taps))))
    }

    /// Follows `GET /v1/events` until `onEvent` returns false.
    /// `timeout`: give up after that many seconds without a byte (0: never).
    /// `onConnected` runs once the daemon has accepted the subscription.
    public func events(timeout: Double = 0, onConnected: () -> Void = {}, onEvent: (VMEvent) -> Bool) throws {
        var streaming = http
        streaming.timeout = timeout
        do {
            try streaming.streamLines("/v1/events", onHead: { status, _ in
                guard status == 200 else { throw Failure.api(status: status, message: "events: HTTP \(status)") }
                onConnected()
            }) { line in
                guard let event = try? SwiftletJSON.decoder.decode(VMEvent.self, from: Data(line.utf8)) else { return true }
                return onEvent(event)
            }
        } catch let failure as UnixHTTPClient.Failure {
            throw Failure.unreachable(socket: http.socketPath, cause: failure.description)
        }
    }

    // MARK: networks

    public func networks() throws -> [NetworkInfo] { try decode([NetworkInfo].self, call("GET", "/v1/networks")) }
    public func network(_ name: String) throws -> NetworkInfo { try decode(NetworkInfo.self, call("GET", "/v1/networks/\(Self.escape(name))")) }
    /// Defines a network from raw JSON (so that the daemon checks every field).
    public func defineNetwork(json: Data) throws -> NetworkInfo { try decode(NetworkInfo.self, call("POST", "/v1/networks", body: json)) }
    public func defineNetwork(_ definition: NetworkDefinition) throws -> NetworkInfo {
        try defineNetwork(json: SwiftletJSON.encoder().encode(definition))
    }
    public func undefineNetwork(_ name: String) throws { _ = try call("DELETE", "/v1/networks/\(Self.escape(name))") }
    public func startNetwork(_ name: String) throws -> NetworkInfo { try decode(NetworkInfo.self, call("POST", "/v1/networks/\(Self.escape(name))/start")) }
    public func destroyNetwork(_ name: String) throws -> NetworkInfo { try decode(NetworkInfo.self, call("POST", "/v1/networks/\(Self.escape(name))/destroy")) }
    public func setNetworkAutostart(_ name: String, _ enabled: Bool) throws -> NetworkInfo {
        try decode(NetworkInfo.self, call("PUT", "/v1/networks/\(Self.escape(name))/autostart?enabled=\(enabled)"))
    }
    public func interfaces(of vm: String) throws -> [InterfaceAddresses] {
        try decode([InterfaceAddresses].self, call("GET", "/v1/vms/\(Self.escape(vm))/interfaces"))
    }

    // MARK: pools and volumes

    public func pools() throws -> [PoolInfo] { try decode([PoolInfo].self, call("GET", "/v1/pools")) }
    public func pool(_ name: String) throws -> PoolInfo { try decode(PoolInfo.self, call("GET", "/v1/pools/\(Self.escape(name))")) }
    public func definePool(json: Data) throws -> PoolInfo { try decode(PoolInfo.self, call("POST", "/v1/pools", body: json)) }
    public func definePool(_ definition: PoolDefinition) throws -> PoolInfo { try definePool(json: SwiftletJSON.encoder().encode(definition)) }
    public func undefinePool(_ name: String) throws { _ = try call("DELETE", "/v1/pools/\(Self.escape(name))") }
    public func startPool(_ name: String) throws -> PoolInfo { try decode(PoolInfo.self, call("POST", "/v1/pools/\(Self.escape(name))/start")) }
    public func destroyPool(_ name: String) throws -> PoolInfo { try decode(PoolInfo.self, call("POST", "/v1/pools/\(Self.escape(name))/destroy")) }
    public func volumes(in pool: String) throws -> [VolumeInfo] { try decode([VolumeInfo].self, call("GET", "/v1/pools/\(Self.escape(pool))/volumes")) }
    public func volume(_ pool: String, _ name: String) throws -> VolumeInfo {
        try decode(VolumeInfo.self, call("GET", "/v1/pools/\(Self.escape(pool))/volumes/\(Self.escape(name))"))
    }
    public func createVolume(in pool: String, _ request: VolumeRequest) throws -> VolumeInfo {
        try decode(VolumeInfo.self, call("POST", "/v1/pools/\(Self.escape(pool))/volumes", body: SwiftletJSON.encoder().encode(request)))
    }
    public func deleteVolume(in pool: String, _ name: String) throws { _ = try call("DELETE", "/v1/pools/\(Self.escape(pool))/volumes/\(Self.escape(name))") }
}
