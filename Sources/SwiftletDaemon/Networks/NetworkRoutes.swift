import Foundation
import Hummingbird
import SwiftletClient

/// The REST API's network routes (`/v1/networks...`) and `GET /v1/vms/{name}/interfaces`.
extension DaemonAPI {
    static let networkRoutes: [Route] = [
        Route(method: .get, path: "/v1/networks") { api, _, _ in try await api.queries.run { try api.json(api.networkManager().list()) } },
        Route(method: .post, path: "/v1/networks") { api, request, _ in
            let definition = try await api.decodeBody(NetworkDefinition.self, request, what: "network definition",
                                                      example: #"{"name": "lab", "subnet": "10.10.0.0/24", "mode": "nat"}"#)
            return try await api.actions.run { try api.json(api.networkManager().define(definition), status: .created) }
        },
        Route(method: .get, path: "/v1/networks/:name") { api, _, context in
            let name = context.name
            return try await api.queries.run { try api.json(api.networkManager().get(name)) }
        },
        Route(method: .delete, path: "/v1/networks/:name") { api, _, context in
            let name = context.name
            return try await api.actions.run { try api.networkManager().undefine(name); return Response(status: .noContent) }
        },
        Route(method: .post, path: "/v1/networks/:name/start") { api, _, context in
            let name = context.name
            return try await api.actions.run { try api.json(api.networkManager().start(name)) }
        },
        Route(method: .post, path: "/v1/networks/:name/destroy") { api, _, context in
            let name = context.name
            return try await api.actions.run { try api.json(api.networkManager().destroy(name)) }
        },
        Route(method: .put, path: "/v1/networks/:name/autostart") { api, request, context in
            let name = context.name
            guard let text = DaemonAPI.query(request, "enabled"), text == "true" || text == "false" else {
                throw DaemonError.badRequest("autostart needs ?enabled=true or ?enabled=false")
            }
            return try await api.actions.run { try api.json(api.networkManager().setAutostart(name, text == "true")) }
        },
        Route(method: .get, path: "/v1/vms/:name/interfaces") { api, _, context in
            let name = context.name
            return try await api.queries.run { try api.json(api.interfaces(of: name)) }
        },
    ]

    func networkManager() throws(DaemonError) -> NetworkManager {
        guard let networks = supervisor.networks else { throw .unavailable("this swiftletd runs no networks") }
        return networks
    }

    /// Each NIC with its tap (while running) and the addresses its network's
    /// DHCP leases give its MAC (`swiftlet domifaddr`).
    func interfaces(of name: String) throws(DaemonError) -> [InterfaceAddresses] {
        let definition = try row(name).definition
        let running = supervisor.networks?.taps(of: name) ?? []
        var leasesByNetwork: [String: [NetworkLease]] = [:]
        var prefixes: [String: Int] = [:]
        var result: [InterfaceAddresses] = []
        var onNetwork = 0
        for (index, nic) in definition.nics.enumerated() {
            var tap = nic.tap
            var addresses: [String] = []
            if let network = nic.network {
                if onNetwork < running.count, running[onNetwork].network == network { tap = running[onNetwork].tap }
                onNetwork += 1
                if leasesByNetwork[network] == nil {
                    leasesByNetwork[network] = supervisor.networks?.leases(network) ?? []
                    prefixes[network] = (try? store.network(network))??.definition.subnet.split(separator: "/").last.flatMap { Int($0) }
                }
                let now = Int(Date().timeIntervalSince1970)
                addresses = (leasesByNetwork[network] ?? [])
                    .filter { $0.mac == nic.mac?.lowercased() && ($0.expires == 0 || $0.expires > now) }
                    .map { "\($0.address)/\(prefixes[network] ?? 32)" }
            }
            result.append(InterfaceAddresses(id: nic.id ?? "net\(index)", mac: nic.mac, network: nic.network, tap: tap, addresses: addresses))
        }
        return result
    }

    /// Gives every NIC without a MAC one (52:54:00:xx:xx:xx) no other definition uses.
    func assignMACs(_ definition: inout VMDefinition) throws(DaemonError) {
        guard definition.nics.contains(where: { $0.mac == nil }) else { return }
        let rows: [DefinitionStore.Row]
        do { rows = try store.all() } catch { throw .internal("reading the database: \(error)") }
        var used = Set(rows.filter { $0.definition.name != definition.name }.flatMap { $0.definition.nics.compactMap { $0.mac?.lowercased() } })
        used.formUnion(definition.nics.compactMap { $0.mac?.lowercased() })
        for index in definition.nics.indices where definition.nics[index].mac == nil {
            var mac = Supervisor.randomMAC()
            while used.contains(mac) { mac = Supervisor.randomMAC() }
            used.insert(mac)
            definition.nics[index].mac = mac
        }
    }
}
