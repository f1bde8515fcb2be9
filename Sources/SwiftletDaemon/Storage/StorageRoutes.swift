import Foundation
import Hummingbird
import SwiftletClient

/// The REST API's pool and volume routes (`/v1/pools...`).
extension DaemonAPI {
    static let storageRoutes: [Route] = [
        Route(method: .get, path: "/v1/pools") { api, _, _ in try await api.queries.run { try api.json(api.storageManager().pools()) } },
        Route(method: .post, path: "/v1/pools") { api, request, _ in
            let definition = try await api.decodeBody(PoolDefinition.self, request, what: "pool definition", example: #"{"name": "vms"}"#)
            return try await api.actions.run { try api.json(api.storageManager().definePool(definition), status: .created) }
        },
        Route(method: .get, path: "/v1/pools/:name") { api, _, context in
            let name = context.name
            return try await api.queries.run { try api.json(api.storageManager().pool(name)) }
        },
        Route(method: .delete, path: "/v1/pools/:name") { api, _, context in
            let name = context.name
            return try await api.actions.run { try api.storageManager().undefinePool(name); return Response(status: .noContent) }
        },
        Route(method: .post, path: "/v1/pools/:name/start") { api, _, context in
            let name = context.name
            return try await api.actions.run { try api.json(api.storageManager().startPool(name)) }
        },
        Route(method: .post, path: "/v1/pools/:name/destroy") { api, _, context in
            let name = context.name
            return try await api.actions.run { try api.json(api.storageManager().destroyPool(name)) }
        },
        Route(method: .get, path: "/v1/pools/:name/volumes") { api, _, context in
            let name = context.name
            return try await api.queries.run { try api.json(api.storageManager().volumes(in: name)) }
        },
        Route(method: .post, path: "/v1/pools/:name/volumes") { api, request, context in
            let name = context.name
            let body = try await api.decodeBody(VolumeRequest.self, request, what: "volume request",
                                                example: #"{"name": "web-root", "capacity_bytes": 10737418240, "format": "qcow2"}"#)
            return try await api.actions.run { try api.json(api.storageManager().createVolume(in: name, body), status: .created) }
        },
        Route(method: .get, path: "/v1/pools/:name/volumes/:volume") { api, _, context in
            let (name, volume) = (context.name, context.volume)
            return try await api.queries.run { try api.json(api.storageManager().volume(name, volume)) }
        },
        Route(method: .delete, path: "/v1/pools/:name/volumes/:volume") { api, _, context in
            let (name, volume) = (context.name, context.volume)
            return try await api.actions.run {
                let running = api.supervisor.runningDiskPaths()
                try api.storageManager().deleteVolume(in: name, volume, usedBy: running)
                return Response(status: .noContent)
            }
        },
    ]

    func storageManager() throws(DaemonError) -> StorageManager {
        guard let storage = supervisor.storage else { throw .unavailable("this swiftletd has no storage pools") }
        return storage
    }
}

extension Supervisor {
    /// The disk paths of each running VM (as it was started).
    func runningDiskPaths() -> [String: [String]] {
        runtimes.withLock { table in
            table.compactMapValues { runtime in runtime.pid == nil ? nil : runtime.definition?.disks.compactMap(\.path) }
        }
    }
}
