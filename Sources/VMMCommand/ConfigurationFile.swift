import HostSystem
import LeanJSON
import VMM

/// The `--config` JSON file: an object with the same settings as the flags.
/// Unknown keys are refused so that a typo is never silently ignored.
public struct ConfigurationFile: Equatable, Sendable {
    public static let knownKeys = ["kernel", "initrd", "cmdline", "cpus", "memory", "serial", "console", "on_reboot", "rng"]
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
            case "rng":
                guard let flag = value.boolValue else { throw mismatch(key, value, "true or false", path) }
                result.rng = flag
            case "cpus":
                guard let count = value.integerValue, let exact = Int(exactly: count) else { throw mismatch(key, value, "a whole number", path) }
                result.cpus = exact
            case "memory":
                if let megabytes = value.unsignedValue {
                    result.memory = String(megabytes)
                } else {
                    result.memory = try string()
                }
            default:
                throw .invalidConfiguration(field: "config key", value: key, expected: "one of \(knownKeys.joined(separator: ", ")) (in \(path))")
            }
        }
        return result
    }

    private static func mismatch(_ key: String, _ value: JSONValue, _ expected: String, _ path: String) -> VMMError {
        .invalidConfiguration(field: "config key", value: key, expected: "\(expected), not \(value.typeName) (in \(path))")
    }
}
