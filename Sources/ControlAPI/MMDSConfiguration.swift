import LeanJSON
import MMDS
import VMM

/// Firecracker's `MmdsConfig`: which interfaces reach MMDS, at which
/// address, speaking which version.
public struct MMDSConfiguration: Equatable, Sendable {
    public var version: MMDSVersion
    public var interfaceIDs: [String]
    public var address: IPv4Address
    /// Always answer in IMDS text, whatever the Accept header says.
    public var imdsCompatible: Bool

    public init(version: MMDSVersion = .v1, interfaceIDs: [String], address: IPv4Address = .defaultMMDS, imdsCompatible: Bool = false) {
        self.version = version
        self.interfaceIDs = interfaceIDs
        self.address = address
        self.imdsCompatible = imdsCompatible
    }

    static let fields = ["version", "network_interfaces", "ipv4_address", "imds_compat"]

    /// Parses and checks a PUT /mmds/config body (or the config file's
    /// `mmds-config`); `interfaces` are the ids that exist now.
    init(json fields: JSONFields, interfaces: [String]) throws(APIError) {
        try fields.allowOnly(Self.fields)
        let versionText = try fields.string("version") ?? MMDSVersion.v1.rawValue
        guard let version = MMDSVersion(rawValue: versionText) else {
            throw .badRequest("\(fields.context): 'version' '\(versionText)' is not one of V1, V2")
        }
        guard let list = fields.value("network_interfaces") else { throw fields.missing("network_interfaces") }
        guard case let .array(elements) = list else { throw fields.mismatch("network_interfaces", list, "an array of interface ids") }
        var ids: [String] = []
        for element in elements {
            guard let id = element.stringValue else { throw fields.mismatch("network_interfaces", element, "an array of strings") }
            if !ids.contains(id) { ids.append(id) }
        }
        guard !ids.isEmpty else {
            throw .badRequest("MMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
        }
        var address = IPv4Address.defaultMMDS
        if let text = try fields.string("ipv4_address") {
            guard let parsed = IPv4Address(parsing: text) else {
                throw .badRequest("\(fields.context): 'ipv4_address' '\(text.prefix(64))' is not an IPv4 address such as 169.254.169.254")
            }
            guard parsed.isUsableLinkLocal else {
                throw .badRequest("MMDS config error: The MMDS IPv4 address is not link local. ('\(text)': use 169.254.1.0 to 169.254.254.255)")
            }
            address = parsed
        }
        if let unknown = ids.first(where: { !interfaces.contains($0) }) {
            throw .badRequest("MMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface. ('\(unknown.prefix(64))'; known: \(interfaces.isEmpty ? "none" : interfaces.joined(separator: ", ")))")
        }
        self.init(version: version, interfaceIDs: ids, address: address, imdsCompatible: try fields.bool("imds_compat") ?? false)
    }

    /// The layout GET /vm/config shows (Firecracker's member order).
    var json: String {
        JSONText.object([
            ("version", JSONText.string(version.rawValue)),
            ("network_interfaces", JSONText.array(interfaceIDs.map(JSONText.string))),
            ("ipv4_address", JSONText.string(address.description)),
            ("imds_compat", JSONText.bool(imdsCompatible)),
        ])
    }
}

/// MMDS as the instance has it: the process's metadata service (its data
/// survives reboots) and the configuration, if any interface reaches it.
public struct MMDSSettings: Equatable, Sendable {
    public let service: MetadataService
    public var configuration: MMDSConfiguration?
    /// The data store exists in Firecracker's sense: MMDS was configured,
    /// `--metadata` filled it, or an /mmds request came before boot. After
    /// boot, /mmds requests without it are refused as Firecracker does.
    public var created = false

    public init(service: MetadataService = MetadataService()) {
        self.service = service
    }

    /// Settings compare by what was configured; the service is the process's own.
    public static func == (lhs: MMDSSettings, rhs: MMDSSettings) -> Bool {
        lhs.configuration == rhs.configuration && lhs.created == rhs.created
    }

    /// Applies the configuration to the service and records it.
    mutating func configure(_ configuration: MMDSConfiguration) {
        service.configure(version: configuration.version, imdsCompatible: configuration.imdsCompatible)
        self.configuration = configuration
        created = true
    }

    /// What the VM is built with.
    var attachment: MetadataServiceAttachment? {
        configuration.map { MetadataServiceAttachment(service: service, address: $0.address, interfaceIDs: $0.interfaceIDs) }
    }

    var json: String { configuration?.json ?? "null" }
}

extension InstanceConfiguration {
    /// Ids of every network interface: the command line's and the API's.
    var allInterfaceIDs: [String] {
        base.networkInterfaces.map(\.id) + networkInterfaces.map(\.interfaceID)
    }

    /// The config file's `mmds-config` section.
    mutating func applyMMDSSection(_ value: JSONValue) throws(APIError) {
        mmds.configure(try MMDSConfiguration(json: JSONFields(value, context: "mmds-config"), interfaces: allInterfaceIDs))
    }
}
