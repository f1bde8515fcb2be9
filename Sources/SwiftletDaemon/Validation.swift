import Foundation
import SwiftletClient

/// Checks a definition before it is stored: every refusal is one sentence
/// naming the field, the bad value and what is valid.
public enum DefinitionValidator {
    public static let maximumNameLength = 64
    public static let maximumCommandLine = 2048

    /// `what`: "VM" or "snapshot", which are named alike (both become file names).
    public static func validateName(_ name: String, what: String = "VM") throws(DaemonError) {
        guard !name.isEmpty else { throw .badRequest("the \(what) name is empty; use 1 to \(maximumNameLength) of A-Z a-z 0-9 . _ -") }
        guard name.utf8.count <= maximumNameLength else {
            throw .badRequest("the \(what) name is \(name.utf8.count) bytes long; at most \(maximumNameLength) allowed")
        }
        guard !name.contains("/"), !name.contains(".."), name != "." else {
            throw .badRequest("invalid \(what) name '\(printable(name))': no '/', '..' or '.' (names become file names)")
        }
        let allowed = name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0) }
        guard allowed, let first = name.unicodeScalars.first, !"._-".unicodeScalars.contains(first) else {
            throw .badRequest("invalid \(what) name '\(printable(name))': use A-Z a-z 0-9 . _ -, starting with a letter or digit")
        }
    }

    static func printable(_ text: String, limit: Int = 80) -> String {
        String(text.unicodeScalars.prefix(limit).map { $0.properties.isWhitespace || $0.value < 0x20 ? "?" : Character($0) })
    }

    /// Validates and normalizes (assigns a UUID when absent).
    public static func validate(_ input: VMDefinition) throws(DaemonError) -> VMDefinition {
        var definition = input
        try validateName(definition.name)
        if let uuid = definition.uuid {
            guard let parsed = UUID(uuidString: uuid) else { throw .badRequest("invalid uuid '\(printable(uuid))': expected the 8-4-4-4-12 hex form") }
            definition.uuid = parsed.uuidString.lowercased()
        } else {
            definition.uuid = UUID().uuidString.lowercased()
        }
        guard (1...254).contains(definition.cpus) else { throw .badRequest("invalid cpus \(definition.cpus): expected 1 to 254") }
        guard (16...1_048_576).contains(definition.memoryMiB) else {
            throw .badRequest("invalid memory_mib \(definition.memoryMiB): expected 16 to 1048576 (MiB)")
        }
        try DriverRegistry.validate(definition)
        if let kernel = definition.kernel { try validatePath(kernel, field: "kernel") }
        if let initrd = definition.initrd { try validatePath(initrd, field: "initrd") }
        if let cmdline = definition.cmdline {
            guard cmdline.utf8.count <= maximumCommandLine else { throw .badRequest("cmdline is \(cmdline.utf8.count) bytes; at most \(maximumCommandLine)") }
            guard !cmdline.unicodeScalars.contains(where: { $0.value < 0x20 }) else { throw .badRequest("cmdline contains control characters (newline, tab or NUL)") }
        }
        var diskIDs = Set<String>()
        for (index, disk) in definition.disks.enumerated() {
            switch (disk.path, disk.volume) {
            case let (path?, nil): try validatePath(path, field: "disks[\(index)].path")
            case let (nil, volume?): _ = try StorageManager.splitVolume(volume, field: "disks[\(index)].volume")
            case (nil, nil): throw .badRequest("disks[\(index)] names neither a path nor a volume: give path: FILE or volume: POOL/NAME")
            case (.some, .some): throw .badRequest("disks[\(index)] names both a path and a volume; give one")
            }
            if let format = disk.format, !["raw", "qcow2"].contains(format) {
                throw .badRequest("invalid disks[\(index)].format '\(printable(format))': expected raw or qcow2")
            }
            if let id = disk.id {
                try validateIdentifier(id, field: "disks[\(index)].id")
                guard diskIDs.insert(id).inserted else { throw .badRequest("disks[\(index)].id '\(id)' is used twice") }
            }
        }
        for (index, nic) in definition.nics.enumerated() {
            switch (nic.tap, nic.network) {
            case let (tap?, nil):
                try validateInterfaceName(tap, field: "nics[\(index)].tap")
            case let (nil, network?):
                try validateName(network, what: "network")
            case (nil, nil):
                throw .badRequest("nics[\(index)] names neither a tap nor a network: give tap: NAME (a tap you made) or network: NAME (`swiftlet net-list` shows networks)")
            case (.some, .some):
                throw .badRequest("nics[\(index)] names both a tap and a network; give one")
            }
            if let mac = nic.mac {
                let parts = mac.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 6, parts.allSatisfy({ $0.count == 2 && UInt8($0, radix: 16) != nil }) else {
                    throw .badRequest("invalid nics[\(index)].mac '\(printable(mac))': expected six hex pairs like 52:54:00:12:34:56")
                }
            }
            if let id = nic.id { try validateIdentifier(id, field: "nics[\(index)].id") }
            let range = VMDefinition.NIC.queueRange
            if let queues = nic.queues, !range.contains(queues) {
                throw .badRequest("invalid nics[\(index)].queues \(queues): expected \(range.lowerBound) to \(range.upperBound) queue pairs (default 1)")
            }
            if let mtu = nic.mtu, !VMDefinition.NIC.mtuRange.contains(mtu) {
                throw .badRequest("invalid nics[\(index)].mtu \(mtu): expected \(VMDefinition.NIC.mtuRange.lowerBound) to \(VMDefinition.NIC.mtuRange.upperBound) (bytes), or no mtu to offer none")
            }
        }
        guard ["log", "none"].contains(definition.console) else {
            throw .badRequest("invalid console '\(printable(definition.console))': expected log or none")
        }
        guard ["restart", "shutdown"].contains(definition.onReboot) else {
            throw .badRequest("invalid on_reboot '\(printable(definition.onReboot))': expected restart or shutdown")
        }
        if let limits = definition.limits {
            if let cpu = limits.cpuPercent, !(1...25_400).contains(cpu) {
                throw .badRequest("invalid limits.cpu_percent \(cpu): expected 1 to 25400 (100 = one host CPU)")
            }
            if let memory = limits.memoryMiB, memory < definition.memoryMiB {
                throw .badRequest("limits.memory_mib \(memory) is below the guest's memory_mib \(definition.memoryMiB); the VMM would be killed")
            }
        }
        return definition
    }

    /// A Linux interface name: 1 to 15 printable bytes, no '/' or spaces.
    static func validateInterfaceName(_ name: String, field: String) throws(DaemonError) {
        guard !name.isEmpty, name.utf8.count <= 15, !name.contains("/"), name != ".", name != "..",
              name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f && $0 != ":" }) else {
            throw .badRequest("invalid \(field) '\(printable(name))': a Linux interface name, 1 to 15 characters, no '/', ':' or spaces")
        }
    }

    static func validatePath(_ path: String, field: String) throws(DaemonError) {
        guard path.hasPrefix("/") else { throw .badRequest("\(field) '\(printable(path))' must be an absolute path") }
        guard path.utf8.count <= 4096, !path.unicodeScalars.contains(where: { $0.value < 0x20 }), !path.contains(",") else {
            throw .badRequest("\(field) '\(printable(path))' has control characters or a comma, or is too long")
        }
    }

    static func validateIdentifier(_ id: String, field: String) throws(DaemonError) {
        guard !id.isEmpty, id.count <= 64, id.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "_-".unicodeScalars.contains($0) }) else {
            throw .badRequest("invalid \(field) '\(printable(id))': 1 to 64 of A-Z a-z 0-9 _ -")
        }
    }
}

/// An error the REST API turns into an HTTP status and `{"error": ...}`.
public enum DaemonError: Error, CustomStringConvertible, Sendable {
    case badRequest(String)
    case notFound(String)
    case conflict(String)
    case methodNotAllowed(String)
    case tooLarge(String)
    case unavailable(String)
    /// Not enough free space for a disk copy (507).
    case insufficientStorage(String)
    case `internal`(String)

    public var status: Int {
        switch self {
        case .badRequest: 400
        case .notFound: 404
        case .conflict: 409
        case .methodNotAllowed: 405
        case .tooLarge: 413
        case .unavailable: 503
        case .insufficientStorage: 507
        case .internal: 500
        }
    }

    public var description: String {
        switch self {
        case .badRequest(let m), .notFound(let m), .conflict(let m), .methodNotAllowed(let m), .tooLarge(let m), .unavailable(let m), .insufficientStorage(let m), .internal(let m): m
        }
    }

    static func noSuchSnapshot(_ name: String, of vm: String) -> DaemonError {
        .notFound("VM '\(DefinitionValidator.printable(vm))' has no snapshot named '\(DefinitionValidator.printable(name))'; `swiftlet snapshot-list \(DefinitionValidator.printable(vm))` lists its snapshots")
    }

    static func noSuchVM(_ name: String) -> DaemonError {
        .notFound("no VM named '\(DefinitionValidator.printable(name))'; `swiftlet list --all` shows defined VMs")
    }
}
