import Foundation
import GRDB
import SwiftletClient

/// VM definitions in SQLite (GRDB), one row per VM keyed by name. The
/// definition itself is a JSON column so that new fields need no column
/// changes; the columns beside it are what the daemon queries or keeps
/// across restarts (the last run's outcome).
public final class DefinitionStore: Sendable {
    /// A pool: WAL journal, reads beside the one writer.
    let database: DatabasePool

    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        // In WAL mode, NORMAL still never corrupts the database; a power cut may lose the last define.
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
        database = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(database)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: definitions") { db in
            try db.create(table: "vm") { table in
                table.column("name", .text).primaryKey()
                table.column("uuid", .text).notNull().unique()
                table.column("definition", .text).notNull()
                table.column("createdAt", .double).notNull()
                table.column("updatedAt", .double).notNull()
            }
        }
        migrator.registerMigration("v2: last run outcome") { db in
            try db.alter(table: "vm") { table in
                table.add(column: "lastState", .text)
                table.add(column: "lastReason", .text)
            }
        }
        migrator.registerMigration("v3: snapshots") { db in
            // Keyed by the VM's name; undefine is refused while a VM has snapshots.
            try db.create(table: "snapshot") { table in
                table.column("vm", .text).notNull()
                table.column("name", .text).notNull()
                table.column("createdAt", .double).notNull()
                table.column("stateBytes", .integer).notNull()
                table.column("memoryBytes", .integer).notNull()
                table.column("diskBytes", .text).notNull()
                table.column("vmmVersion", .text)
                table.column("definition", .text).notNull()
                table.primaryKey(["vm", "name"])
            }
        }
        migrator.registerMigration("v4: networks and storage") { db in
            // `active`: the network was started and not destroyed; a daemon
            // start re-adopts (or re-creates) every active network.
            try db.create(table: "network") { table in
                table.column("name", .text).primaryKey()
                table.column("uuid", .text).notNull().unique()
                table.column("definition", .text).notNull()
                table.column("active", .boolean).notNull().defaults(to: false)
                table.column("createdAt", .double).notNull()
                table.column("updatedAt", .double).notNull()
            }
            try db.create(table: "setting") { table in
                table.column("key", .text).primaryKey()
                table.column("value", .text).notNull()
            }
            try db.create(table: "pool") { table in
                table.column("name", .text).primaryKey()
                table.column("uuid", .text).notNull().unique()
                table.column("definition", .text).notNull()
                table.column("active", .boolean).notNull().defaults(to: false)
            }
            // A volume's format is recorded, never probed: a guest may write any bytes into a raw volume.
            try db.create(table: "volume") { table in
                table.column("pool", .text).notNull()
                table.column("name", .text).notNull()
                table.column("format", .text).notNull()
                table.column("capacity", .integer).notNull()
                table.column("backing", .text)
                table.column("backingFormat", .text)
                table.column("createdAt", .double).notNull()
                table.primaryKey(["pool", "name"])
            }
        }
        return migrator
    }

    public struct Row: Sendable {
        public var definition: VMDefinition
        public var lastState: VMState?
        public var lastReason: String?
    }

    public func all() throws -> [Row] {
        try database.read { db in
            try GRDB.Row.fetchAll(db, sql: "SELECT definition, lastState, lastReason FROM vm ORDER BY name").map(Self.decode)
        }
    }

    public func get(_ name: String) throws -> Row? {
        try database.read { db in
            try GRDB.Row.fetchOne(db, sql: "SELECT definition, lastState, lastReason FROM vm WHERE name = ?", arguments: [name]).map(Self.decode)
        }
    }

    static func decode(_ row: GRDB.Row) throws -> Row {
        let json: String = row["definition"]
        let definition = try SwiftletJSON.decoder.decode(VMDefinition.self, from: Data(json.utf8))
        let state: String? = row["lastState"]
        return Row(definition: definition, lastState: state.flatMap(VMState.init(rawValue:)), lastReason: row["lastReason"])
    }

    public enum Failure: Error { case duplicate(String), notFound(String) }

    /// Inserts a new definition; `.duplicate` when the name (or UUID) is taken.
    public func insert(_ definition: VMDefinition) throws {
        let json = String(decoding: try SwiftletJSON.encoder().encode(definition), as: UTF8.self)
        let now = Date().timeIntervalSince1970
        do {
            try database.write { db in
                try db.execute(sql: "INSERT INTO vm (name, uuid, definition, createdAt, updatedAt) VALUES (?, ?, ?, ?, ?)",
                               arguments: [definition.name, definition.uuid ?? "", json, now, now])
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw Failure.duplicate(definition.name)
        }
    }

    public func replace(_ definition: VMDefinition) throws {
        let json = String(decoding: try SwiftletJSON.encoder().encode(definition), as: UTF8.self)
        let changed = try database.write { db -> Int in
            try db.execute(sql: "UPDATE vm SET definition = ?, updatedAt = ? WHERE name = ?",
                           arguments: [json, Date().timeIntervalSince1970, definition.name])
            return db.changesCount
        }
        if changed == 0 { throw Failure.notFound(definition.name) }
    }

    public func delete(_ name: String) throws {
        let changed = try database.write { db -> Int in
            try db.execute(sql: "DELETE FROM vm WHERE name = ?", arguments: [name])
            return db.changesCount
        }
        if changed == 0 { throw Failure.notFound(name) }
    }

    public func recordOutcome(_ name: String, state: VMState, reason: String?) throws {
        try database.write { db in
            try db.execute(sql: "UPDATE vm SET lastState = ?, lastReason = ? WHERE name = ?", arguments: [state.rawValue, reason, name])
        }
    }

    public func count() throws -> Int {
        try database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM vm") ?? 0 }
    }

    // MARK: networks and pools: a JSON definition and an `active` flag per name

    /// A network or pool row.
    public struct ActiveRow<Definition: Codable & Sendable>: Sendable {
        public var definition: Definition
        public var active: Bool
    }
    public typealias NetworkRow = ActiveRow<NetworkDefinition>
    public typealias PoolRow = ActiveRow<PoolDefinition>

    /// Every row of `table` ("network" or "pool", never caller input), or the one named `name`.
    func activeRows<Definition>(_ table: String, named name: String? = nil) throws -> [ActiveRow<Definition>] {
        try database.read { db in
            let rows = if let name {
                try GRDB.Row.fetchAll(db, sql: "SELECT definition, active FROM \(table) WHERE name = ?", arguments: [name])
            } else {
                try GRDB.Row.fetchAll(db, sql: "SELECT definition, active FROM \(table) ORDER BY name")
            }
            return try rows.map { row in
                let json: String = row["definition"]
                return ActiveRow(definition: try SwiftletJSON.decoder.decode(Definition.self, from: Data(json.utf8)), active: row["active"])
            }
        }
    }

    func setActive(_ table: String, _ name: String, _ active: Bool) throws {
        try database.write { db in try db.execute(sql: "UPDATE \(table) SET active = ? WHERE name = ?", arguments: [active, name]) }
    }

    public func networks() throws -> [NetworkRow] { try activeRows("network") }
    public func network(_ name: String) throws -> NetworkRow? { try (activeRows("network", named: name) as [NetworkRow]).first }
    public func setNetworkActive(_ name: String, _ active: Bool) throws { try setActive("network", name, active) }
    public func pools() throws -> [PoolRow] { try activeRows("pool") }
    public func pool(_ name: String) throws -> PoolRow? { try (activeRows("pool", named: name) as [PoolRow]).first }
    public func setPoolActive(_ name: String, _ active: Bool) throws { try setActive("pool", name, active) }

    public func insertNetwork(_ definition: NetworkDefinition) throws {
        let json = String(decoding: try SwiftletJSON.encoder().encode(definition), as: UTF8.self)
        let now = Date().timeIntervalSince1970
        do {
            try database.write { db in
                try db.execute(sql: "INSERT INTO network (name, uuid, definition, createdAt, updatedAt) VALUES (?, ?, ?, ?, ?)",
                               arguments: [definition.name, definition.uuid ?? "", json, now, now])
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw Failure.duplicate(definition.name)
        }
    }

    public func replaceNetwork(_ definition: NetworkDefinition) throws {
        let json = String(decoding: try SwiftletJSON.encoder().encode(definition), as: UTF8.self)
        try database.write { db in
            try db.execute(sql: "UPDATE network SET definition = ?, updatedAt = ? WHERE name = ?",
                           arguments: [json, Date().timeIntervalSince1970, definition.name])
        }
    }

    public func deleteNetwork(_ name: String) throws {
        let changed = try database.write { db -> Int in
            try db.execute(sql: "DELETE FROM network WHERE name = ?", arguments: [name])
            return db.changesCount
        }
        if changed == 0 { throw Failure.notFound(name) }
    }

    public func setting(_ key: String) throws -> String? {
        try database.read { db in try String.fetchOne(db, sql: "SELECT value FROM setting WHERE key = ?", arguments: [key]) }
    }

    public func setSetting(_ key: String, _ value: String) throws {
        try database.write { db in
            try db.execute(sql: "INSERT INTO setting (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", arguments: [key, value])
        }
    }

    // MARK: pools and volumes

    public struct VolumeRow: Sendable, Equatable {
        public var pool: String
        public var name: String
        public var format: String
        public var capacity: Int
        public var backing: String?
        public var backingFormat: String?
    }

    public func insertPool(_ definition: PoolDefinition) throws {
        let json = String(decoding: try SwiftletJSON.encoder().encode(definition), as: UTF8.self)
        do {
            try database.write { db in
                try db.execute(sql: "INSERT INTO pool (name, uuid, definition) VALUES (?, ?, ?)", arguments: [definition.name, definition.uuid ?? "", json])
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw Failure.duplicate(definition.name)
        }
    }

    public func deletePool(_ name: String) throws {
        try database.write { db in try db.execute(sql: "DELETE FROM pool WHERE name = ?", arguments: [name]) }
    }

    public func volumes(in pool: String) throws -> [VolumeRow] {
        try database.read { db in
            try GRDB.Row.fetchAll(db, sql: "SELECT * FROM volume WHERE pool = ? ORDER BY name", arguments: [pool]).map(Self.decodeVolume)
        }
    }

    public func allVolumes() throws -> [VolumeRow] {
        try database.read { db in try GRDB.Row.fetchAll(db, sql: "SELECT * FROM volume ORDER BY pool, name").map(Self.decodeVolume) }
    }

    public func volume(_ pool: String, _ name: String) throws -> VolumeRow? {
        try database.read { db in
            try GRDB.Row.fetchOne(db, sql: "SELECT * FROM volume WHERE pool = ? AND name = ?", arguments: [pool, name]).map(Self.decodeVolume)
        }
    }

    static func decodeVolume(_ row: GRDB.Row) -> VolumeRow {
        VolumeRow(pool: row["pool"], name: row["name"], format: row["format"], capacity: row["capacity"], backing: row["backing"], backingFormat: row["backingFormat"])
    }

    public func insertVolume(_ volume: VolumeRow) throws {
        do {
            try database.write { db in
                try db.execute(sql: "INSERT INTO volume (pool, name, format, capacity, backing, backingFormat, createdAt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               arguments: [volume.pool, volume.name, volume.format, volume.capacity, volume.backing, volume.backingFormat, Date().timeIntervalSince1970])
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw Failure.duplicate(volume.name)
        }
    }

    public func deleteVolume(_ pool: String, _ name: String) throws {
        try database.write { db in try db.execute(sql: "DELETE FROM volume WHERE pool = ? AND name = ?", arguments: [pool, name]) }
    }
}
