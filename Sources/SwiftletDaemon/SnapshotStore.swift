import Foundation
import GRDB
import SwiftletClient

/// Snapshot rows (migration `v3: snapshots`): one per (VM, name), beside
/// the definitions; the files live in `<state>/snapshots/<vm>/<name>/`.
extension DefinitionStore {
    public struct SnapshotRow: Sendable, Equatable {
        public var vm: String
        public var name: String
        public var createdAt: Double
        public var stateBytes: Int
        public var memoryBytes: Int
        public var diskBytes: [Int]
        public var vmmVersion: String?
        public var definition: VMDefinition
    }

    static let snapshotColumns = "vm, name, createdAt, stateBytes, memoryBytes, diskBytes, vmmVersion, definition"

    static func decodeSnapshot(_ row: GRDB.Row) throws -> SnapshotRow {
        let definition: String = row["definition"]
        let disks: String = row["diskBytes"]
        return SnapshotRow(vm: row["vm"], name: row["name"], createdAt: row["createdAt"], stateBytes: row["stateBytes"],
                           memoryBytes: row["memoryBytes"], diskBytes: try SwiftletJSON.decoder.decode([Int].self, from: Data(disks.utf8)),
                           vmmVersion: row["vmmVersion"],
                           definition: try SwiftletJSON.decoder.decode(VMDefinition.self, from: Data(definition.utf8)))
    }

    /// Every snapshot (of `vm`, or of all VMs), by VM and time taken.
    public func snapshots(of vm: String? = nil) throws -> [SnapshotRow] {
        try database.read { db in
            let sql = "SELECT \(Self.snapshotColumns) FROM snapshot" + (vm == nil ? "" : " WHERE vm = ?") + " ORDER BY vm, createdAt, name"
            return try GRDB.Row.fetchAll(db, sql: sql, arguments: StatementArguments(vm.map { [$0] } ?? [])).map(Self.decodeSnapshot)
        }
    }

    public func snapshot(vm: String, name: String) throws -> SnapshotRow? {
        try database.read { db in
            try GRDB.Row.fetchOne(db, sql: "SELECT \(Self.snapshotColumns) FROM snapshot WHERE vm = ? AND name = ?", arguments: [vm, name])
                .map(Self.decodeSnapshot)
        }
    }

    /// `.duplicate` when the VM already has a snapshot of that name.
    public func insertSnapshot(_ row: SnapshotRow) throws {
        let definition = String(decoding: try SwiftletJSON.encoder().encode(row.definition), as: UTF8.self)
        let disks = String(decoding: try SwiftletJSON.encoder().encode(row.diskBytes), as: UTF8.self)
        do {
            try database.write { db in
                try db.execute(sql: "INSERT INTO snapshot (\(Self.snapshotColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               arguments: [row.vm, row.name, row.createdAt, row.stateBytes, row.memoryBytes, disks, row.vmmVersion, definition])
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw Failure.duplicate(row.name)
        }
    }

    public func deleteSnapshot(vm: String, name: String) throws {
        let changed = try database.write { db -> Int in
            try db.execute(sql: "DELETE FROM snapshot WHERE vm = ? AND name = ?", arguments: [vm, name])
            return db.changesCount
        }
        if changed == 0 { throw Failure.notFound(name) }
    }

    public func snapshotCount(of vm: String) throws -> Int {
        try database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM snapshot WHERE vm = ?", arguments: [vm]) ?? 0 }
    }
}
