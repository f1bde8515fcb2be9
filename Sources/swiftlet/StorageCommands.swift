import ArgumentParser
import Foundation
import SwiftletClient

// `pool-*` and `vol-*` verbs, as virsh has them (docs/storage.md).

struct PoolDefine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool-define", abstract: "Define a directory storage pool from a JSON or YAML file.",
        discussion: """
            Example file:

              name: vms
              path: /var/lib/swiftlet/images/pools/vms   # optional; inside an image folder
              autostart: true

            Then `swiftlet pool-start vms` and `swiftlet vol-create vms web 10G`.
            """)
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The pool definition file.") var file: String
    func run() throws {
        let body = try definitionJSON(fromFile: file)
        try withDaemon {
            let info = try daemon.client.definePool(json: body)
            try daemon.report(info, "defined pool \(info.definition.name) at \(info.definition.path ?? "-")")
        }
    }
}

struct PoolStart: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pool-start", abstract: "Start a pool (its folder is created if missing).")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The pool's name.") var name: String
    func run() throws {
        try withDaemon {
            let info = try daemon.client.startPool(name)
            try daemon.report(info, "pool \(name) started")
        }
    }
}

struct PoolDestroy: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pool-destroy", abstract: "Stop a pool (its files stay).")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The pool's name.") var name: String
    func run() throws {
        try withDaemon {
            let info = try daemon.client.destroyPool(name)
            try daemon.report(info, "pool \(name) destroyed")
        }
    }
}

struct PoolUndefine: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pool-undefine", abstract: "Remove an inactive pool without volumes.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The pool's name.") var name: String
    func run() throws {
        try withDaemon {
            try daemon.client.undefinePool(name)
            print(daemon.json ? "{}" : "undefined pool \(name)")
        }
    }
}

struct PoolList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pool-list", abstract: "List active pools (--all: every defined pool).")
    @OptionGroup var daemon: DaemonOptions
    @Flag(name: .shortAndLong, help: "Include inactive pools.") var all = false
    func run() throws {
        try withDaemon {
            let pools = try daemon.client.pools().filter { all || $0.active }
            if daemon.json { try daemon.printJSON(pools); return }
            print(Format.table(["NAME", "STATE", "AUTOSTART", "VOLUMES", "AVAILABLE", "PATH"], pools.map {
                [$0.definition.name, $0.active ? "active" : "inactive", $0.definition.autostart ? "yes" : "no", String($0.volumes),
                 Format.bytes($0.availableBytes), $0.definition.path ?? "-"]
            }))
        }
    }
}

/// `10G`, `512M`, `64K`, `1T` or bytes.
func parseSize(_ text: String) throws -> Int {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    var digits = text.uppercased()
    var scale = 1
    if digits.hasSuffix("B") { digits.removeLast() }
    if let last = digits.last, let unit = units[last] {
        scale = unit
        digits.removeLast()
    }
    guard let value = Int(digits), value > 0, value <= Int.max / scale else {
        throw ValidationError("invalid size '\(text)': expected a whole number of bytes or with K, M, G or T, like 10G")
    }
    return value * scale
}

struct VolCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vol-create", abstract: "Create a volume: a qcow2 image (default, optionally an overlay on --backing) or a raw one.",
        discussion: "A VM uses it as a disk with `disks: [{volume: POOL/NAME}]`.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The pool's name (`swiftlet pool-list`).") var pool: String
    @Argument(help: "The volume's name (A-Z a-z 0-9 . _ -; also its file name).") var name: String
    @Argument(help: "The virtual size: bytes, or with K, M, G or T (10G).") var size: String
    @Option(help: "qcow2 or raw.") var format = "qcow2"
    @Option(help: "A backing image: POOL/NAME of a volume, or an absolute path in an image folder (a qcow2 overlay).") var backing: String?
    @Option(help: "The backing path's format, raw (default) or qcow2; a volume's is known.") var backingFormat: String?
    func run() throws {
        let bytes = try parseSize(size)
        try withDaemon {
            let info = try daemon.client.createVolume(in: pool, VolumeRequest(name: name, capacityBytes: bytes, format: format,
                                                                              backing: backing, backingFormat: backingFormat))
            if daemon.json { try daemon.printJSON(info) } else { print("created volume \(pool)/\(name): \(info.format), \(Format.bytes(info.capacityBytes)), \(info.path)") }
        }
    }
}

struct VolList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "vol-list", abstract: "List a pool's volumes.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The pool's name (`swiftlet pool-list`).") var pool: String
    func run() throws {
        try withDaemon {
            let volumes = try daemon.client.volumes(in: pool)
            if daemon.json { try daemon.printJSON(volumes); return }
            print(Format.table(["NAME", "FORMAT", "CAPACITY", "ALLOCATION", "BACKING", "PATH"], volumes.map {
                [$0.name, $0.format, Format.bytes($0.capacityBytes), Format.bytes($0.allocationBytes), $0.backing ?? "-", $0.path]
            }))
        }
    }
}

struct VolInfo: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "vol-info", abstract: "Show a volume's format, sizes and backing image.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The pool's name (`swiftlet pool-list`).") var pool: String
    @Argument(help: "The volume's name.") var name: String
    func run() throws {
        try withDaemon {
            let info = try daemon.client.volume(pool, name)
            if daemon.json { try daemon.printJSON(info); return }
            var rows = [("Name", "\(info.pool)/\(info.name)"), ("Path", info.path), ("Format", info.format),
                        ("Capacity", Format.bytes(info.capacityBytes)), ("Allocation", Format.bytes(info.allocationBytes))]
            if let backing = info.backing { rows.append(("Backing", "\(backing) (\(info.backingFormat ?? "raw"))")) }
            for (key, value) in rows { print(key.padding(toLength: 10, withPad: " ", startingAt: 0) + "  " + value) }
        }
    }
}

struct VolDelete: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "vol-delete", abstract: "Delete a volume and its file (refused while a running VM uses it or an overlay backs on it).")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The pool's name (`swiftlet pool-list`).") var pool: String
    @Argument(help: "The volume's name.") var name: String
    func run() throws {
        try withDaemon {
            try daemon.client.deleteVolume(in: pool, name)
            print(daemon.json ? "{}" : "deleted volume \(pool)/\(name)")
        }
    }
}
