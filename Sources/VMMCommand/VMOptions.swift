import ArgumentParser
import HostSystem
import VMM

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The options that describe a VM, shared by `swiftlet-vmm` and `swiftlet run`.
public struct VMOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Kernel image: an uncompressed ELF vmlinux with a PVH entry, or a bzImage.", valueName: "path"))
    public var kernel: String?

    @Option(name: .long, help: ArgumentHelp("Initial ramdisk (cpio archive, optionally compressed).", valueName: "path"))
    public var initrd: String?

    @Option(name: .long, help: ArgumentHelp("Kernel command line. Default: \"\(VMConfiguration.defaultCommandLine)\".", valueName: "text"))
    public var cmdline: String?

    @Option(name: .long, help: ArgumentHelp("Number of vCPUs (default 1).", valueName: "n"))
    public var cpus: Int?

    @Option(name: .long, help: ArgumentHelp("Guest RAM: 512M, 2G, or a plain number of MiB (default 128M).", valueName: "size"))
    public var memory: String?

    @Option(name: .long, help: ArgumentHelp("COM1 console: stdio (interactive; Ctrl-A x quits), file:PATH, or none (default stdio).", valueName: "mode"))
    public var serial: String?

    @Option(name: .customLong("on-reboot"), help: ArgumentHelp("When the guest reboots: restart it, or exit with status 2 (default exit).", valueName: "restart|exit"))
    public var onReboot: String?

    @Option(name: .long, help: ArgumentHelp("JSON file with the same settings (keys: \(ConfigurationFile.knownKeys.joined(separator: ", "))). Flags given as well override it.", valueName: "file"))
    public var config: String?

    @Option(name: .customLong("kvm-device"), help: .hidden)
    public var kvmDevice: String = "/dev/kvm"

    public init() {}

    /// The configuration these options describe, each bad value named.
    public func configuration() throws(VMMError) -> VMConfiguration {
        let file = try config.map { (path) throws(VMMError) in try ConfigurationFile.load(path: path) }
        guard let kernelPath = kernel ?? file?.kernel else {
            throw .invalidConfiguration(field: "kernel", value: "(none)", expected: "--kernel PATH or \"kernel\" in --config")
        }
        var result = VMConfiguration(kernelPath: kernelPath)
        result.initrdPath = initrd ?? file?.initrd
        result.commandLine = cmdline ?? file?.cmdline ?? VMConfiguration.defaultCommandLine
        result.cpuCount = cpus ?? file?.cpus ?? 1
        if let text = memory ?? file?.memory {
            guard let bytes = MemorySize.parse(text) else {
                throw .invalidConfiguration(field: "memory", value: text, expected: "a size such as 512M, 2G or 1024 (MiB)")
            }
            result.memorySize = bytes
        }
        if let text = serial ?? file?.serial {
            guard let mode = SerialMode(argument: text) else {
                throw .invalidConfiguration(field: "serial", value: text, expected: "stdio, file:PATH or none")
            }
            result.serial = mode
        }
        if let text = onReboot ?? file?.onReboot {
            guard let action = RebootAction(rawValue: text) else {
                throw .invalidConfiguration(field: "on-reboot", value: text, expected: "restart or exit")
            }
            result.onReboot = action
        }
        result.kvmDevicePath = kvmDevice
        try result.validate()
        return result
    }
}

/// The `--config` JSON file. Unknown keys are refused so a typo is never
/// silently ignored.
public struct ConfigurationFile: Decodable, Equatable {
    public static let knownKeys = ["kernel", "initrd", "cmdline", "cpus", "memory", "serial", "on_reboot"]

    public var kernel: String?
    public var initrd: String?
    public var cmdline: String?
    public var cpus: Int?
    public var memory: String?
    public var serial: String?
    public var onReboot: String?

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    struct UnknownKey: Error { let key: String }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: AnyKey.self)
        for key in container.allKeys where !Self.knownKeys.contains(key.stringValue) {
            throw UnknownKey(key: key.stringValue)
        }
        kernel = try container.decodeIfPresent(String.self, forKey: AnyKey(stringValue: "kernel"))
        initrd = try container.decodeIfPresent(String.self, forKey: AnyKey(stringValue: "initrd"))
        cmdline = try container.decodeIfPresent(String.self, forKey: AnyKey(stringValue: "cmdline"))
        cpus = try container.decodeIfPresent(Int.self, forKey: AnyKey(stringValue: "cpus"))
        // Memory may be "512M" or a number of MiB.
        let memoryKey = AnyKey(stringValue: "memory")
        if let number = try? container.decodeIfPresent(UInt64.self, forKey: memoryKey) {
            memory = String(number)
        } else {
            memory = try container.decodeIfPresent(String.self, forKey: memoryKey)
        }
        serial = try container.decodeIfPresent(String.self, forKey: AnyKey(stringValue: "serial"))
        onReboot = try container.decodeIfPresent(String.self, forKey: AnyKey(stringValue: "on_reboot"))
    }

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
        do {
            return try JSONDecoder().decode(ConfigurationFile.self, from: Data(bytes))
        } catch let error as UnknownKey {
            throw .invalidConfiguration(field: "config key", value: error.key, expected: "one of \(knownKeys.joined(separator: ", ")) (in \(path))")
        } catch let DecodingError.typeMismatch(type, context) {
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw .invalidConfiguration(field: "config key", value: key, expected: "a value of type \(type) (in \(path))")
        } catch {
            throw .invalidConfiguration(field: "config file", value: path, expected: "a JSON object (\(error))")
        }
    }
}
