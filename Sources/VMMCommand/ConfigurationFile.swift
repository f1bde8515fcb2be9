import HostSystem
import LeanJSON
import VMM

/// The `--config` JSON file: an object with the same settings as the flags.
/// Unknown keys are refused so that a typo is never silently ignored.
public struct ConfigurationFile: Equatable, Sendable {
    public static let knownKeys = ["kernel", "initrd", "cmdline", "cpus", "memory", "serial", "console", "on_reboot", "rng", "disks", "network_interfaces", "transport", "vsock"]
    /// Config files are small; anything larger is a mistake.
    public static let maximumSize = 1 << 20

    public var kernel: String?
    public var initrd: String?
    public var cmdline: String?
    public var cpus: Int?
    /// "512M", or a number of MiB written as a JSON number.
    public var memory: String?
    public var serial: String?
    public var console: String?
    public var onReboot: String?
    /// A virtio-rng device.
    public var rng: Bool?
    /// "pci" or "mmio" (checked when the configuration is built).
    public var transport: String?
    /// `"network_interfaces": [{"tap": "tap0", "mac": "...", "id": "...", "offloads": false}, {"tap_fd": 3}]`
    public var networkInterfaces: [VMM.NetworkInterfaceConfiguration]?
    /// "disks": [{"path": ..., "readonly": true, "id": ..., "direct": false, "format": "qcow2"}, ...]
    public var disks: [DiskConfiguration]?
    /// "vsock": {"guest_cid": 3, "uds_path": "/run/v.sock"}
    public var vsock: VsockConfiguration?

    public static func load(path: String) throws(VMMError) -> ConfigurationFile {
        let bytes: [UInt8]
        do {
            bytes = try OwnedFileDescriptor.readWholeFile(path)
        } catch {
            throw .readFile(role: "config file", path: path, cause: error)
        }
        return try parse(bytes, path: path)
    }

    public static func parse(_ bytes: [UInt8], path: String) throws(VMMError) -> ConfigurationFile {
        guard bytes.count <= maximumSize else {
            throw .invalidConfiguration(field: "config file", value: path, expected: "at most \(maximumSize) bytes")
        }
        let document: JSONValue
        do {
            document = try JSONParser.parse(bytes)
        } catch {
            throw .invalidConfiguration(field: "config file", value: path, expected: "valid JSON (\(error))")
        }
        guard case let .object(members) = document else {
            throw .invalidConfiguration(field: "config file", value: path, expected: "a JSON object, not \(document.typeName)")
        }
        var result = ConfigurationFile()
        for (key, value) in members {
            func string() throws(VMMError) -> String {
                guard let text = value.stringValue else { throw mismatch(key, value, "a string", path) }
                return text
            }
            switch key {
            case "kernel": result.kernel = try string()
            case "initrd": result.initrd = try string()
            case "cmdline": result.cmdline = try string()
            case "serial": result.serial = try string()
            case "console": result.console = try string()
            case "on_reboot": result.onReboot = try string()
            case "transport": result.transport = try string()
            case "rng":
                guard let flag = value.boolValue else { throw mismatch(key, value, "true or false", path) }
                result.rng = flag
            case "disks": result.disks = try parseDisks(value, path: path)
            case "cpus":
                guard let count = value.integerValue, let exact = Int(exactly: count) else { throw mismatch(key, value, "a whole number", path) }
                result.cpus = exact
            case "memory":
                if let megabytes = value.unsignedValue {
                    result.memory = String(megabytes)
                } else {
                    result.memory = try string()
                }
            case "network_interfaces":
                result.networkInterfaces = try networkInterfaces(value, path: path)
            case "vsock":
                result.vsock = try parseVsock(value, path: path)
            default:
                throw .invalidConfiguration(field: "config key", value: key, expected: "one of \(knownKeys.joined(separator: ", ")) (in \(path))")
            }
        }
        return result
    }

    /// Each element is an object with "tap" or "tap_fd", and optionally
    /// "mac", "id" and "offloads".
    static func networkInterfaces(_ value: JSONValue, path: String) throws(VMMError) -> [VMM.NetworkInterfaceConfiguration] {
        guard case let .array(elements) = value else { throw mismatch("network_interfaces", value, "an array of objects", path) }
        var result: [VMM.NetworkInterfaceConfiguration] = []
        for (index, element) in elements.enumerated() {
            let key = "network_interfaces[\(index)]"
            guard case let .object(members) = element else { throw mismatch(key, element, "an object such as {\"tap\": \"tap0\"}", path) }
            var id = "net\(index)", tap: String?, descriptor: String?, mac: String?, offloads = true
            for (name, member) in members {
                switch name {
                case "id", "tap", "mac":
                    guard let text = member.stringValue else { throw mismatch("\(key).\(name)", member, "a string", path) }
                    switch name {
                    case "id": id = text
                    case "tap": tap = text
                    default: mac = text
                    }
                case "tap_fd":
                    guard let number = member.integerValue else { throw mismatch("\(key).tap_fd", member, "a whole number", path) }
                    descriptor = String(number)
                case "offloads":
                    guard let flag = member.boolValue else { throw mismatch("\(key).offloads", member, "true or false", path) }
                    offloads = flag
                default:
                    throw .invalidConfiguration(field: "config key", value: "\(key).\(name)", expected: "one of tap, tap_fd, mac, id, offloads (in \(path))")
                }
            }
            result.append(try VMM.NetworkInterfaceConfiguration.make(id: id, tapName: tap, tapDescriptor: descriptor, mac: mac, offloads: offloads))
        }
        return result
    }

    /// "disks": an array of objects with "path" (required), "readonly",
    /// "direct" (booleans), "id" (a string; disk0, disk1... by default) and
    /// "format" ("raw" or "qcow2"; probed when absent).
    static func parseDisks(_ value: JSONValue, path: String) throws(VMMError) -> [DiskConfiguration] {
        guard case let .array(items) = value else { throw mismatch("disks", value, "an array of disk objects", path) }
        var disks: [DiskConfiguration] = []
        for (index, item) in items.enumerated() {
            guard case let .object(members) = item else { throw mismatch("disks[\(index)]", item, "an object", path) }
            var disk = DiskConfiguration(path: "", id: "disk\(index)")
            var hasPath = false
            for (key, member) in members {
                let name = "disks[\(index)].\(key)"
                switch key {
                case "path", "id":
                    guard let text = member.stringValue else { throw mismatch(name, member, "a string", path) }
                    if key == "path" { disk.path = text; hasPath = true } else { disk.id = text }
                case "format":
                    guard let text = member.stringValue else { throw mismatch(name, member, "\"raw\" or \"qcow2\"", path) }
                    disk.format = try DiskConfiguration.parseFormat(text)
                case "readonly", "direct":
                    guard let flag = member.boolValue else { throw mismatch(name, member, "true or false", path) }
                    if key == "readonly" { disk.readOnly = flag } else { disk.directIO = flag }
                default:
                    throw .invalidConfiguration(field: "config key", value: name,
                                                expected: "one of path, readonly, id, direct, format (in \(path))")
                }
            }
            guard hasPath else {
                throw .invalidConfiguration(field: "config key", value: "disks[\(index)]", expected: "a \"path\" naming a raw or qcow2 image (in \(path))")
            }
            disks.append(disk)
        }
        return disks
    }

    /// "vsock": an object with "guest_cid" (a number) and "uds_path" (a string).
    static func parseVsock(_ value: JSONValue, path: String) throws(VMMError) -> VsockConfiguration {
        guard case let .object(members) = value else { throw mismatch("vsock", value, "an object such as {\"guest_cid\": 3, \"uds_path\": \"/run/v.sock\"}", path) }
        var cid: UInt64?, socket: String?
        for (key, member) in members {
            switch key {
            case "guest_cid":
                guard let number = member.unsignedValue else { throw mismatch("vsock.guest_cid", member, "a whole number", path) }
                cid = number
            case "uds_path":
                guard let text = member.stringValue else { throw mismatch("vsock.uds_path", member, "a string", path) }
                socket = text
            default:
                throw .invalidConfiguration(field: "config key", value: "vsock.\(key)", expected: "one of guest_cid, uds_path (in \(path))")
            }
        }
        guard let cid, let socket else {
            throw .invalidConfiguration(field: "config key", value: "vsock", expected: "both \"guest_cid\" and \"uds_path\" (in \(path))")
        }
        let configuration = VsockConfiguration(guestCID: cid, udsPath: socket)
        try configuration.validate()
        return configuration
    }

    private static func mismatch(_ key: String, _ value: JSONValue, _ expected: String, _ path: String) -> VMMError {
        .invalidConfiguration(field: "config key", value: key, expected: "\(expected), not \(value.typeName) (in \(path))")
    }
}
