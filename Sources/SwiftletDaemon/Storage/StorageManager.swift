import Foundation
import QCOW2
import Logging
import Synchronization
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// Directory storage pools and their volumes (docs/storage.md). A pool is a
/// folder inside one of the image folders; a volume is a file in it whose
/// format (raw or qcow2), size and backing image the database records, so
/// that nothing is ever probed from bytes a guest may have written.
public final class StorageManager: Sendable {
    let store: DefinitionStore
    let images: ImagePolicy
    let defaultRoot: String
    let logger: Logger
    let operations = Mutex<Void>(())
    /// The largest volume (64 TiB).
    public static let maximumCapacity = 64 << 40

    public init(store: DefinitionStore, images: ImagePolicy, stateDirectory: String, logger: Logger) {
        self.store = store
        self.images = images
        defaultRoot = stateDirectory + "/images/pools"
        self.logger = logger
    }

    func database<T>(_ body: () throws -> T) throws(DaemonError) -> T {
        do { return try body() } catch { throw .internal("the database: \(error)") }
    }

    // MARK: pools

    func poolRow(_ name: String) throws(DaemonError) -> DefinitionStore.PoolRow {
        try DefinitionValidator.validateName(name, what: "pool")
        guard let row = try database({ try store.pool(name) }) else {
            throw .notFound("no pool named '\(DefinitionValidator.printable(name))'; `swiftlet pool-list --all` shows defined pools")
        }
        return row
    }

    func info(_ row: DefinitionStore.PoolRow) -> PoolInfo {
        let count = (try? store.volumes(in: row.definition.name).count) ?? 0
        var capacity: Int?, available: Int?
        var fs = statvfs()
        if let path = row.definition.path, statvfs(path, &fs) == 0 {
            capacity = Int(fs.f_blocks) * Int(fs.f_frsize)
            available = Int(fs.f_bavail) * Int(fs.f_frsize)
        }
        return PoolInfo(definition: row.definition, active: row.active, volumes: count, capacityBytes: capacity, availableBytes: available)
    }

    public func pools() throws(DaemonError) -> [PoolInfo] { try database { try store.pools() }.map(info) }
    public func pool(_ name: String) throws(DaemonError) -> PoolInfo { info(try poolRow(name)) }

    public func definePool(_ input: PoolDefinition) throws(DaemonError) -> PoolInfo {
        var definition = input
        try DefinitionValidator.validateName(definition.name, what: "pool")
        if let uuid = definition.uuid {
            guard let parsed = UUID(uuidString: uuid) else { throw .badRequest("invalid uuid '\(DefinitionValidator.printable(uuid))': expected the 8-4-4-4-12 hex form") }
            definition.uuid = parsed.uuidString.lowercased()
        } else {
            definition.uuid = UUID().uuidString.lowercased()
        }
        let path = definition.path ?? defaultRoot + "/" + definition.name
        definition.path = try folderInsideImages(path)
        return try operations.withLock { _ throws(DaemonError) in
            let others = try database { try store.pools() }
            if let other = others.first(where: { $0.definition.path == definition.path }) {
                throw .conflict("pool '\(other.definition.name)' already uses \(definition.path ?? ""); give another path")
            }
            do { try store.insertPool(definition) } catch DefinitionStore.Failure.duplicate {
                throw .conflict("a pool named '\(definition.name)' (or with uuid \(definition.uuid ?? "")) is already defined")
            } catch {
                throw .internal("storing the pool: \(error)")
            }
            logger.info("pool defined", metadata: ["pool": "\(definition.name)", "path": "\(definition.path ?? "")"])
            return info(DefinitionStore.PoolRow(definition: definition, active: false))
        }
    }

    /// An absolute folder that lies inside an image folder once resolved
    /// (as far as it exists); its resolved form.
    func folderInsideImages(_ path: String) throws(DaemonError) -> String {
        let shown = DefinitionValidator.printable(path, limit: 4096)
        guard path.hasPrefix("/"), path.utf8.count <= 4096, !path.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }),
              !path.unicodeScalars.contains(where: { $0.value < 0x20 }), !path.contains(",") else {
            throw .badRequest("invalid pool path '\(shown)': an absolute folder without '.', '..', commas or control characters")
        }
        var existing = path
        var rest: [String] = []
        while ImagePolicy.realPath(existing) == nil, existing != "/" {
            rest.insert((existing as NSString).lastPathComponent, at: 0)
            existing = (existing as NSString).deletingLastPathComponent
        }
        let base = ImagePolicy.realPath(existing) ?? existing
        let resolved = ([base == "/" ? "" : base] + rest).joined(separator: "/")
        guard images.contains(resolved) else {
            throw .badRequest("pool path '\(shown)' is outside the image directories; allowed: \(images.allowedList) (swiftletd --image-dir adds one)")
        }
        return resolved
    }

    public func startPool(_ name: String) throws(DaemonError) -> PoolInfo {
        try operations.withLock { _ throws(DaemonError) in
            var row = try poolRow(name)
            if row.active { throw .conflict("pool '\(name)' is already active") }
            let path = row.definition.path ?? ""
            var isFolder: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), !isFolder.boolValue {
                throw .conflict("pool '\(name)': its path \(path) exists and is not a folder; move it away or define the pool elsewhere")
            }
            do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
                var ancestor = (path as NSString).deletingLastPathComponent
                while !FileManager.default.fileExists(atPath: ancestor, isDirectory: &isFolder) { ancestor = (ancestor as NSString).deletingLastPathComponent }
                if !isFolder.boolValue {
                    throw .conflict("pool '\(name)': its path \(path) cannot be created: \(ancestor) is a file, not a folder")
                }
                throw .internal("cannot create pool folder \(path): \(error.localizedDescription)")
            }
            try database { try store.setPoolActive(name, true) }
            row.active = true
            return info(row)
        }
    }

    public func destroyPool(_ name: String) throws(DaemonError) -> PoolInfo {
        try operations.withLock { _ throws(DaemonError) in
            var row = try poolRow(name)
            guard row.active else { throw .conflict("pool '\(name)' is not active") }
            try database { try store.setPoolActive(name, false) }
            row.active = false
            return info(row)
        }
    }

    public func undefinePool(_ name: String) throws(DaemonError) {
        try operations.withLock { _ throws(DaemonError) in
            let row = try poolRow(name)
            guard !row.active else { throw .conflict("pool '\(name)' is active; `swiftlet pool-destroy \(name)` first") }
            let count = try database { try store.volumes(in: name).count }
            guard count == 0 else {
                throw .conflict("pool '\(name)' has \(count) volume\(count == 1 ? "" : "s"); `swiftlet vol-list \(name)` lists them and `swiftlet vol-delete \(name) NAME` deletes one")
            }
            try database { try store.deletePool(name) }
        }
    }

    public func autostartPools() {
        for row in (try? store.pools()) ?? [] where row.definition.autostart && !row.active {
            do { _ = try startPool(row.definition.name) } catch {
                logger.error("pool autostart failed", metadata: ["pool": "\(row.definition.name)", "error": "\(error)"])
            }
        }
    }

    // MARK: volumes

    func volumePath(_ pool: DefinitionStore.PoolRow, _ name: String) -> String { (pool.definition.path ?? "") + "/" + name }

    func volumeInfo(_ pool: DefinitionStore.PoolRow, _ row: DefinitionStore.VolumeRow) -> VolumeInfo {
        let path = volumePath(pool, row.name)
        var status = stat()
        let allocation = stat(path, &status) == 0 ? Int(status.st_blocks) * 512 : 0
        return VolumeInfo(pool: row.pool, name: row.name, path: path, format: row.format, capacityBytes: row.capacity,
                          allocationBytes: allocation, backing: row.backing, backingFormat: row.backingFormat)
    }

    public func volumes(in pool: String) throws(DaemonError) -> [VolumeInfo] {
        let row = try poolRow(pool)
        return try database { try store.volumes(in: pool) }.map { volumeInfo(row, $0) }
    }

    public func volume(_ pool: String, _ name: String) throws(DaemonError) -> VolumeInfo {
        let row = try poolRow(pool)
        try DefinitionValidator.validateName(name, what: "volume")
        guard let volume = try database({ try store.volume(pool, name) }) else {
            throw .notFound("pool '\(pool)' has no volume named '\(DefinitionValidator.printable(name))'; `swiftlet vol-list \(pool)` lists its volumes")
        }
        return volumeInfo(row, volume)
    }

    public func createVolume(in pool: String, _ request: VolumeRequest) throws(DaemonError) -> VolumeInfo {
        try DefinitionValidator.validateName(request.name, what: "volume")
        guard ["qcow2", "raw"].contains(request.format) else {
            throw .badRequest("invalid format '\(DefinitionValidator.printable(request.format))': expected qcow2 or raw")
        }
        guard (1...Self.maximumCapacity).contains(request.capacityBytes) else {
            throw .badRequest("invalid capacity_bytes \(request.capacityBytes): expected 1 to \(Self.maximumCapacity) (64 TiB)")
        }
        let capacity = (request.capacityBytes + 511) / 512 * 512
        return try operations.withLock { _ throws(DaemonError) in
            let row = try poolRow(pool)
            guard row.active else { throw .conflict("pool '\(pool)' is not active; `swiftlet pool-start \(pool)` starts it") }
            if try database({ try store.volume(pool, request.name) }) != nil {
                throw .conflict("pool '\(pool)' already has a volume named '\(request.name)'")
            }
            var backing: (path: String, format: String)?
            if let name = request.backing {
                guard request.format == "qcow2" else { throw .badRequest("a backing image needs format qcow2 (an overlay); raw volumes have none") }
                backing = try resolveBacking(name, format: request.backingFormat)
            } else if request.backingFormat != nil {
                throw .badRequest("backing_format without backing")
            }
            let path = volumePath(row, request.name)
            guard access(path, F_OK) != 0 else {
                throw .conflict("\(path) already exists (a file the pool does not record); move it away or choose another name")
            }
            do throws(DaemonError) {
                if request.format == "raw" {
                    try StorageFormats.createRaw(path: path, capacity: capacity)
                } else {
                    try StorageFormats.createQCOW2(path: path, capacity: capacity, backing: backing?.path, backingFormat: backing?.format)
                }
            } catch {
                unlink(path)
                throw error
            }
            let volume = DefinitionStore.VolumeRow(pool: pool, name: request.name, format: request.format, capacity: capacity,
                                                   backing: backing?.path, backingFormat: backing?.format)
            do { try store.insertVolume(volume) } catch {
                unlink(path)
                throw .internal("recording the volume: \(error)")
            }
            logger.info("volume created", metadata: ["pool": "\(pool)", "volume": "\(request.name)", "format": "\(request.format)", "bytes": "\(capacity)"])
            return volumeInfo(row, volume)
        }
    }

    /// `POOL/NAME` of a volume (its recorded format), or a path in an image
    /// folder (format given, else `raw`: a file is never probed).
    func resolveBacking(_ text: String, format: String?) throws(DaemonError) -> (path: String, format: String) {
        if !text.hasPrefix("/") {
            let (pool, name) = try Self.splitVolume(text, field: "backing")
            let poolRow = try poolRow(pool)
            guard let volume = try database({ try store.volume(pool, name) }) else {
                throw .badRequest("backing '\(DefinitionValidator.printable(text))': pool '\(pool)' has no volume '\(name)'")
            }
            if let format, format != volume.format {
                throw .badRequest("backing_format \(format) differs from volume \(text)'s recorded format \(volume.format)")
            }
            return (volumePath(poolRow, name), volume.format)
        }
        let path = try images.resolve(text, field: "backing", mustExist: true)
        let format = format ?? "raw"
        guard ["raw", "qcow2"].contains(format) else {
            throw .badRequest("invalid backing_format '\(DefinitionValidator.printable(format))': expected raw or qcow2")
        }
        return (path, format)
    }

    static func splitVolume(_ text: String, field: String) throws(DaemonError) -> (pool: String, name: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw .badRequest("invalid \(field) '\(DefinitionValidator.printable(text))': expected POOL/NAME")
        }
        try DefinitionValidator.validateName(String(parts[0]), what: "pool")
        try DefinitionValidator.validateName(String(parts[1]), what: "volume")
        return (String(parts[0]), String(parts[1]))
    }

    /// `usedBy`: the paths of disks of running VMs, which keep a volume from being deleted.
    public func deleteVolume(in pool: String, _ name: String, usedBy running: [String: [String]]) throws(DaemonError) {
        try operations.withLock { _ throws(DaemonError) in
            let info = try volume(pool, name)
            if let user = running.first(where: { $0.value.contains(info.path) }) {
                throw .conflict("volume \(pool)/\(name) is a disk of running VM '\(user.key)'; stop it first")
            }
            let dependents = try database { try store.allVolumes() }.filter { $0.backing == info.path }
            if let dependent = dependents.first {
                throw .conflict("volume \(pool)/\(name) backs \(dependent.pool)/\(dependent.name); delete that overlay first")
            }
            guard unlink(info.path) == 0 || errno == ENOENT else {
                throw .internal("cannot delete \(info.path): \(String(cString: strerror(errno)))")
            }
            try database { try store.deleteVolume(pool, name) }
            logger.info("volume deleted", metadata: ["pool": "\(pool)", "volume": "\(name)"])
        }
    }

    /// A definition's volume disks as paths with their recorded formats;
    /// other disks get `raw` when they name no format.
    public func resolveDisks(_ definition: VMDefinition) throws(DaemonError) -> VMDefinition {
        var resolved = definition
        for index in resolved.disks.indices {
            if let volume = resolved.disks[index].volume {
                let (pool, name) = try Self.splitVolume(volume, field: "disks[\(index)].volume")
                let row = try poolRow(pool)
                guard row.active else {
                    throw .conflict("cannot start '\(definition.name)': disks[\(index)] is on pool '\(pool)', which is not active; `swiftlet pool-start \(pool)`")
                }
                guard let found = try database({ try store.volume(pool, name) }) else {
                    throw .badRequest("cannot start '\(definition.name)': disks[\(index)] names volume \(volume), which does not exist; `swiftlet vol-list \(pool)`")
                }
                resolved.disks[index].path = volumePath(row, name)
                resolved.disks[index].volume = nil
                resolved.disks[index].format = found.format
            } else if resolved.disks[index].format == nil {
                resolved.disks[index].format = "raw"
            }
        }
        return resolved
    }
}

/// Making empty images.
enum StorageFormats {
    static func createRaw(path: String, capacity: Int) throws(DaemonError) {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw .internal("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        // Sparse: the blocks are allocated as the guest writes.
        guard ftruncate(descriptor, off_t(capacity)) == 0, fsync(descriptor) == 0 else {
            throw .internal("cannot size \(path) to \(capacity) bytes: \(String(cString: strerror(errno)))")
        }
    }

    static func createQCOW2(path: String, capacity: Int, backing: String?, backingFormat: String?) throws(DaemonError) {
        do {
            try QCOW2Image.create(path: path, virtualSize: UInt64(capacity), backingFile: backing, backingFormat: backingFormat, mode: 0o600)
        } catch {
            throw .internal("cannot create the qcow2 image \(path): \(error)")
        }
    }
}

extension StorageFormats {
    /// The backing files a qcow2 image reads through, nearest first, as the
    /// QCOW2 engine resolves them. A backing file is followed further only
    /// when its overlay's header says it is qcow2: a raw backing file's bytes
    /// (which a guest may have written) never name files to put in a jail.
    static func backingChain(of path: String) -> [String] {
        var chain: [String] = []
        var current = path
        while chain.count < QCOW2Image.maximumChainDepth,
              let image = try? QCOW2Image(path: current, readOnly: true), let next = image.backingPath {
            chain.append(next)
            guard image.header.backingFormat == "qcow2" else { break }
            current = next
        }
        return chain
    }
}
