import ArgumentParser
import Foundation
import SwiftletClient

/// The snapshot verbs (docs/snapshots.md, "swiftletd and the CLI").
extension Format {
    static func time(_ unix: Double) -> String { ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: unix)) }
}

struct Snapshot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Save a running or paused VM to a snapshot (its state and memory).",
        discussion: """
            The VM is paused while its VMM writes the snapshot, then runs again (or \
            stays paused if it was). Snapshots are stored by swiftletd under \
            <state-dir>/snapshots/VM/NAME and named per VM: two VMs may each have a \
            snapshot called 'base'. Disks are not copied: a restore uses the disk as it \
            is then, so snapshot with --stop when the disk must match the snapshot.

            Examples:
              swiftlet snapshot web before-upgrade
              swiftlet snapshot web golden --stop      then: swiftlet restore golden --vm web --as web2
            """)
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The VM (running or paused).") var vm: String
    @Argument(help: "The snapshot's name: 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit.") var name: String
    @Flag(help: "Leave the VM paused afterwards.") var pause = false
    @Flag(help: "Stop (destroy) the VM afterwards, so its disk stays as the snapshot saw it.") var stop = false

    func validate() throws {
        if pause && stop { throw ValidationError("--pause and --stop exclude each other") }
    }

    func run() throws {
        let after: SnapshotRequest.After = pause ? .pause : stop ? .stop : .continue
        try withDaemon {
            let info = try daemon.client(timeout: 900).createSnapshot(of: vm, SnapshotRequest(name: name, after: after))
            if daemon.json { try daemon.printJSON(info); return }
            print("\(vm): snapshot \(info.name) taken (memory \(Format.bytes(info.memoryBytes)), in \(info.path))")
        }
    }
}

struct SnapshotList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot-list",
        abstract: "List the snapshots of one VM, or of every VM.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Only this VM's snapshots.") var vm: String?
    func run() throws {
        try withDaemon {
            let snapshots = try daemon.client.snapshots(of: vm)
            if daemon.json { try daemon.printJSON(snapshots); return }
            print(Format.table(["VM", "NAME", "CREATED", "MEMORY", "CPUS", "VMM"], snapshots.map {
                [$0.vm, $0.name, Format.time($0.createdAt), Format.bytes($0.memoryBytes), String($0.definition.cpus), $0.vmmVersion ?? "-"]
            }))
        }
    }
}

struct SnapshotDelete: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot-delete",
        abstract: "Delete a VM's snapshot (its files and its record).",
        discussion: "VMs already restored from it keep running.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The VM the snapshot was taken of.") var vm: String
    @Argument(help: "The snapshot.") var name: String
    func run() throws {
        try withDaemon {
            try daemon.client.deleteSnapshot(of: vm, name)
            if daemon.json { print("{}") } else { print("\(vm): snapshot \(name) deleted") }
        }
    }
}

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a VM from a snapshot: the VM itself, or a new VM with --as.",
        discussion: """
            Snapshot names are per VM. --vm says whose snapshot NAME is; without it, \
            NAME must belong to exactly one VM (else the VMs that have one are listed \
            and nothing happens).

            Into the VM itself (it must not be running): its VMM loads the snapshot and \
            the guest goes on from where it was saved.

            With --as NEW: a new VM NEW is defined from the snapshot's definition, with \
            a new uuid, a new MAC for each NIC, autostart off, and its own copy of each \
            writable disk, beside the original as NEW-FILE (a reflink where the file \
            system can, else a full copy); then it starts from the snapshot. This needs \
            swiftletd jailed when the VM has writable disks.

            Examples:
              swiftlet restore before-upgrade --vm web
              swiftlet restore golden --as web2
            """)
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The snapshot.") var name: String
    @Option(help: "The VM the snapshot was taken of (needed when several VMs have a snapshot of that name).") var vm: String?
    @Option(name: .customLong("as"), help: ArgumentHelp("Restore into a new VM of this name instead.", valueName: "new")) var clone: String?
    @Option(name: .customLong("tap"), help: ArgumentHelp("With --as: the new VM's tap for its next NIC (repeat once per NIC, in order; default: the original's taps, which a running original holds).", valueName: "name")) var taps: [String] = []

    func run() throws {
        try withDaemon {
            let client = daemon.client(timeout: 900)
            var owner = vm
            if owner == nil {
                let owners = try client.snapshots().filter { $0.name == name }.map(\.vm)
                switch owners.count {
                case 0:
                    throw SwiftletAPIClient.Failure.api(status: 404, message: "no VM has a snapshot named '\(name)'; `swiftlet snapshot-list` lists them")
                case 1:
                    owner = owners[0]
                default:
                    throw SwiftletAPIClient.Failure.api(status: 400, message: "snapshot '\(name)' exists for the VMs \(owners.joined(separator: ", ")); say which with --vm")
                }
            }
            guard let owner else { return }
            let info = try client.restoreSnapshot(of: owner, name, as: clone, taps: taps.isEmpty ? nil : taps)
            if daemon.json { try daemon.printJSON(info); return }
            print("\(info.definition.name): restored from snapshot \(name) of \(owner) (\(Format.state(info)))")
        }
    }
}
