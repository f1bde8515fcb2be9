/// Every operation the control API serves: its method and path template.
/// The OpenAPI document (docs/api/vmm-api.yaml) lists exactly these; a unit
/// test keeps the two in step.
public enum APIOperation: String, CaseIterable, Sendable {
    case describeInstance
    case getFirecrackerVersion
    case getMachineConfiguration, putMachineConfiguration, patchMachineConfiguration
    case putGuestBootSource
    case putGuestDriveByID, patchGuestDriveByID
    case putGuestNetworkInterfaceByID, patchGuestNetworkInterfaceByID
    case createSyncAction
    case patchVm
    case getExportVmConfig
    case getMetrics
    case putLogger, putMetrics
    case putEntropyDevice
    case putSerialDevice
    case putGuestVsock, putGuestVsockByID
    case putMmds, patchMmds, getMmds, putMmdsConfig
    case createSnapshot, loadSnapshot

    public var method: String {
        switch self {
        case .describeInstance, .getFirecrackerVersion, .getMachineConfiguration, .getExportVmConfig, .getMetrics, .getMmds: "GET"
        case .putMachineConfiguration, .putGuestBootSource, .putGuestDriveByID, .putGuestNetworkInterfaceByID, .createSyncAction,
             .putLogger, .putMetrics, .putEntropyDevice, .putSerialDevice, .putGuestVsock, .putGuestVsockByID, .putMmds, .putMmdsConfig,
             .createSnapshot, .loadSnapshot: "PUT"
        case .patchMachineConfiguration, .patchGuestDriveByID, .patchGuestNetworkInterfaceByID, .patchVm, .patchMmds: "PATCH"
        }
    }

    public var pathTemplate: String {
        switch self {
        case .describeInstance: "/"
        case .getFirecrackerVersion: "/version"
        case .getMachineConfiguration, .putMachineConfiguration, .patchMachineConfiguration: "/machine-config"
        case .putGuestBootSource: "/boot-source"
        case .putGuestDriveByID, .patchGuestDriveByID: "/drives/{drive_id}"
        case .putGuestNetworkInterfaceByID, .patchGuestNetworkInterfaceByID: "/network-interfaces/{iface_id}"
        case .createSyncAction: "/actions"
        case .patchVm: "/vm"
        case .getExportVmConfig: "/vm/config"
        case .getMetrics, .putMetrics: "/metrics"
        case .putLogger: "/logger"
        case .putEntropyDevice: "/entropy"
        case .putSerialDevice: "/serial"
        case .putGuestVsock: "/vsock"
        case .putGuestVsockByID: "/vsock/{vsock_id}"
        case .putMmds, .patchMmds, .getMmds: "/mmds"
        case .putMmdsConfig: "/mmds/config"
        case .createSnapshot: "/snapshot/create"
        case .loadSnapshot: "/snapshot/load"
        }
    }
}

/// Maps a method and path to an operation and its path parameters.
public struct Router: Sendable {
    public enum Match: Equatable, Sendable {
        case operation(APIOperation, parameters: [String: String])
        /// No route has this path.
        case notFound
        /// The path exists, but not with this method; `allowed` lists those it has.
        case methodNotAllowed(allowed: [String])
    }

    public let operations: [APIOperation]

    public init(operations: [APIOperation] = APIOperation.allCases) { self.operations = operations }

    public func match(method: String, path: String) -> Match {
        var pathMatches: [(APIOperation, [String: String])] = []
        for operation in operations {
            if let parameters = Self.match(template: operation.pathTemplate, path: path) {
                pathMatches.append((operation, parameters))
            }
        }
        guard !pathMatches.isEmpty else { return .notFound }
        if let found = pathMatches.first(where: { $0.0.method == method }) {
            return .operation(found.0, parameters: found.1)
        }
        var allowed: [String] = []
        for (operation, _) in pathMatches where !allowed.contains(operation.method) { allowed.append(operation.method) }
        return .methodNotAllowed(allowed: allowed)
    }

    /// Segment-by-segment match; `{name}` matches one non-empty segment.
    /// One trailing slash is ignored.
    static func match(template: String, path: String) -> [String: String]? {
        var path = Substring(path)
        if path.count > 1, path.hasSuffix("/"), !path.dropLast().hasSuffix("/") { path = path.dropLast() }
        let templateSegments = template.split(separator: "/", omittingEmptySubsequences: false)
        let pathSegments = path.split(separator: "/", omittingEmptySubsequences: false)
        guard templateSegments.count == pathSegments.count else { return nil }
        var parameters: [String: String] = [:]
        for (expected, actual) in zip(templateSegments, pathSegments) {
            if expected.hasPrefix("{"), expected.hasSuffix("}") {
                guard !actual.isEmpty else { return nil }
                parameters[String(expected.dropFirst().dropLast())] = String(actual)
            } else if expected != actual {
                return nil
            }
        }
        return parameters
    }
}
