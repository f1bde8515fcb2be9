import LeanJSON
import MMDS
import VMM

/// Firecracker's MMDS routes: /mmds (GET, PUT, PATCH) at any time,
/// /mmds/config (PUT) before boot.
extension InstanceController {
    func performMMDS(_ operation: APIOperation, body: [UInt8]) throws(APIError) -> HTTPResponse {
        switch operation {
        case .putMmdsConfig:
            let fields = try JSONFields(body: body, context: "mmds-config")
            var version = MMDSVersion.v1
            try updateBeforeBoot("mmds-config") { (configuration) throws(APIError) in
                let parsed = try MMDSConfiguration(json: fields, interfaces: configuration.allInterfaceIDs)
                version = parsed.version
                configuration.mmds.configure(parsed)
            }
            var response = HTTPResponse.noContent
            // Firecracker marks V1 as deprecated on this response.
            if version == .v1 { response.headers.append(("Deprecation", "true")) }
            return response
        case .getMmds:
            let service = try metadataService(for: "GET /mmds")
            return .json(service.contents?.serialized ?? "{}")
        case .putMmds, .patchMmds:
            guard !body.isEmpty else { throw .badRequest("mmds: the request needs a JSON body") }
            let value: JSONValue
            do {
                value = try JSONParser.parse(body)
            } catch {
                throw .badRequest("mmds: malformed JSON: \(error)")
            }
            let service = try metadataService(for: operation == .putMmds ? "PUT /mmds" : "PATCH /mmds")
            do {
                if operation == .putMmds { try service.put(value) } else { try service.patch(value) }
            } catch {
                switch error {
                case .notInitialized:
                    throw .badRequest("MMDS error: \(error) (PUT /mmds first)")
                case let .limitExceeded(size, limit):
                    throw APIError(413, "MMDS limit exceeded error: \(error) (\(size) bytes of JSON; the limit is \(limit), set by --mmds-size-limit)")
                }
            }
            return .noContent
        default:
            throw APIError(500, "\(operation.rawValue) is not an MMDS operation")
        }
    }

    /// The data store, which a request before boot creates (as Firecracker's
    /// does); after boot it must exist already.
    func metadataService(for request: String) throws(APIError) -> MetadataService {
        try state.withLock { (state) throws(APIError) -> MetadataService in
            if state.phase == .notStarted {
                state.configuration.mmds.created = true
            } else if !state.configuration.mmds.created {
                throw .badRequest("MMDS error: The MMDS data store is not initialized. (\(request): MMDS was not configured before the VM started)")
            }
            return state.configuration.mmds.service
        }
    }

    /// The `mmds` object of GET /metrics.
    func mmdsMetrics(_ configuration: InstanceConfiguration) -> String {
        JSONText.object(configuration.mmds.service.counters.snapshot.map { ($0.name, "\($0.value)") })
    }
}
