import Foundation
import SwiftletClient
#if canImport(Glibc)
import Glibc
#endif

/// `<state>/snapshots/<vm>/<name>/`: the VMM's two files and the VM's
/// definition when the snapshot was taken.
public struct SnapshotDirectory: Sendable {
    public let path: String
    public var state: String { path + "/state" }
    public var memory: String { path + "/memory" }
    public var definition: String { path + "/definition.json" }
}

/// Snapshots (issue 11) over the VMM's Firecracker routes: `PUT
/// /snapshot/create` on a paused VM, `PUT /snapshot/load` on a fresh VMM.
/// All of it is blocking work for the `actions` pool.
extension Supervisor {
    public var snapshotsDirectory: String { configuration.stateDirectory + "/snapshots" }

    public func snapshotDirectory(vm: String, name: String) -> SnapshotDirectory {
        SnapshotDirectory(path: snapshotsDirectory + "/" + vm + "/" + name)
    }

    public func snapshotInfo(_ row: DefinitionStore.SnapshotRow) -> SnapshotInfo {
        SnapshotInfo(vm: row.vm, name: row.name, createdAt: row.createdAt, stateBytes: row.stateBytes, memoryBytes: row.memoryBytes,
                     diskBytes: row.diskBytes, vmmVersion: row.vmmVersion, definition: row.definition,
                     path: snapshotDirectory(vm: row.vm, name: row.name).path)
    }

    static func fileSize(_ path: String) -> Int? {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        return Int(status.st_size)
    }

    // MARK: create

    /// Pauses the VM (unless paused), has its VMM write the snapshot, puts
    /// the VM back as `request.after` says, then moves the files into the
    /// snapshot's folder and records it. A failure leaves no folder or row.
    public func createSnapshot(of vm: String, _ request: SnapshotRequest) throws(DaemonError) -> DefinitionStore.SnapshotRow {
        let name = request.name
        try DefinitionValidator.validateName(name, what: "snapshot")
        let claimed = runtimes.withLock { table -> Result<Runtime, DaemonError> in
            guard var runtime = table[vm], runtime.pid != nil, runtime.state == .running || runtime.state == .paused else {
                let state = table[vm]?.state ?? .shutOff
                return .failure(.conflict("VM '\(vm)' is \(state.rawValue); snapshots are taken of a running or paused VM (`swiftlet start \(vm)` starts it)"))
            }
            guard runtime.hypervisor == "swiftlet" else {
                return .failure(.conflict("VM '\(vm)' runs under the \(runtime.hypervisor) driver, which takes no snapshots (docs/drivers.md)"))
            }
            guard runtime.controlAPI else {
                return .failure(.conflict("VM '\(vm)' runs on a VMM without the control API; it cannot be snapshotted"))
            }
            guard !runtime.snapshotting else { return .failure(.conflict("a snapshot of VM '\(vm)' is already being taken")) }
            runtime.snapshotting = true
            table[vm] = runtime
            return .success(runtime)
        }
        let runtime = try claimed.get()
        defer { runtimes.withLock { $0[vm]?.snapshotting = false } }
        guard let pid = runtime.pid else { throw .conflict("VM '\(vm)' is not running") }

        let existing: DefinitionStore.SnapshotRow?
        let stored: DefinitionStore.Row?
        do {
            existing = try store.snapshot(vm: vm, name: name)
            stored = try store.get(vm)
        } catch {
            throw .internal("reading the database: \(error)")
        }
        if existing != nil {
            throw .conflict("VM '\(vm)' already has a snapshot named '\(name)'; `swiftlet snapshot-delete \(vm) \(name)` removes it")
        }
        guard var definition = runtime.definition ?? stored?.definition else { throw .noSuchVM(vm) }
        // A network NIC's tap belongs to this run: a restore makes a new one.
        for index in definition.nics.indices where definition.nics[index].network != nil { definition.nics[index].tap = nil }

        let final = snapshotDirectory(vm: vm, name: name)
        // Snapshot names cannot start with '.', so this never is one.
        let partial = SnapshotDirectory(path: snapshotsDirectory + "/" + vm + "/." + name + ".partial")
        let fileManager = FileManager.default
        try? fileManager.removeItem(atPath: partial.path)
        do { try fileManager.createDirectory(atPath: partial.path, withIntermediateDirectories: true) } catch {
            throw .internal("cannot create \(partial.path): \(error)")
        }
        var keep = false
        defer { if !keep { try? fileManager.removeItem(atPath: partial.path) } }

        // A jailed VMM writes inside its jail, into a folder it owns; the files are moved out after.
        let jail = configuration.jail.map { VMJail(configuration: $0, name: vm, vmmBinary: configuration.vmmBinary) }
        var output: (inside: String, host: String)?
        if let jail {
            do { output = try jail.snapshotOutput(named: name) } catch { throw .internal("cannot snapshot '\(vm)': \(error)") }
        }
        defer { if let output { try? fileManager.removeItem(atPath: output.host) } }
        let vmmState = output.map { $0.inside + "/state" } ?? partial.state
        let vmmMemory = output.map { $0.inside + "/memory" } ?? partial.memory

        // Writing the guest's RAM takes a while for a big guest.
        let control = VMMControl(socketPath: runDirectory(vm).apiSocket, timeout: 600)
        let wasRunning = runtime.state == .running
        if wasRunning {
            do { try control.pause() } catch { throw controlFailure(vm, pid: pid, doing: "paused for a snapshot", error) }
            runtimes.withLock { if $0[vm]?.pid == pid { $0[vm]?.state = .paused } }
            publish(vm, .paused, "taking snapshot '\(name)'")
        }
        let version = try? control.version()
        var failure: DaemonError?
        do {
            try control.createSnapshot(statePath: vmmState, memoryPath: vmmMemory)
        } catch {
            failure = controlFailure(vm, pid: pid, doing: "snapshotted", error)
        }
        let after = request.after ?? .continue
        // Running again as soon as the files are written; also when the snapshot failed.
        if wasRunning && (after == .continue || failure != nil) && HostProcess.isAlive(pid) {
            do {
                try control.resume()
                runtimes.withLock { if $0[vm]?.pid == pid { $0[vm]?.state = .running } }
                publish(vm, .running, nil)
            } catch {
                logger.error("resuming after a snapshot failed", metadata: ["vm": "\(vm)", "error": "\(error)"])
            }
        }
        if let failure { throw failure }

        do {
            if let output {
                try Self.moveOut(output.host + "/state", to: partial.state)
                try Self.moveOut(output.host + "/memory", to: partial.memory)
            }
            for file in [partial.state, partial.memory] {
                guard chown(file, geteuid(), getegid()) == 0, chmod(file, 0o600) == 0 else {
                    throw VMJail.Failure(description: "taking over \(file): \(String(cString: strerror(errno)))")
                }
            }
        } catch {
            throw .internal("cannot store the snapshot's files: \(error)")
        }
        guard let stateBytes = Self.fileSize(partial.state), let memoryBytes = Self.fileSize(partial.memory) else {
            throw .internal("the VMM answered the snapshot of '\(vm)' but did not write \(vmmState) and \(vmmMemory)")
        }
        let row = DefinitionStore.SnapshotRow(vm: vm, name: name, createdAt: Date().timeIntervalSince1970, stateBytes: stateBytes,
                                              memoryBytes: memoryBytes, diskBytes: definition.disks.map { Self.fileSize($0.path ?? "") ?? 0 },
                                              vmmVersion: version ?? nil, definition: definition)
        do {
            try SwiftletJSON.encoder(pretty: true).encode(definition).write(to: URL(fileURLWithPath: partial.definition))
            // A folder left by a crash between rename and insert has no row: it goes.
            try? fileManager.removeItem(atPath: final.path)
            guard rename(partial.path, final.path) == 0 else {
                throw VMJail.Failure(description: "renaming \(partial.path): \(String(cString: strerror(errno)))")
            }
        } catch {
            throw .internal("cannot store the snapshot: \(error)")
        }
        do {
            try store.insertSnapshot(row)
        } catch {
            try? fileManager.removeItem(atPath: final.path)
            if case DefinitionStore.Failure.duplicate = error {
                throw .conflict("VM '\(vm)' already has a snapshot named '\(name)'")
            }
            throw .internal("recording the snapshot: \(error)")
        }
        keep = true
        count("snapshots")
        logger.info("snapshot taken", metadata: ["vm": "\(vm)", "snapshot": "\(name)", "memory_bytes": "\(memoryBytes)"])
        if after == .stop {
            do { try destroy(vm) } catch {
                logger.error("stopping after a snapshot failed", metadata: ["vm": "\(vm)", "error": "\(error)"])
            }
        }
        return row
    }

    /// Moves a file the jailed VMM wrote out of its jail (copied when the
    /// jails are on another file system).
    static func moveOut(_ source: String, to target: String) throws {
        if rename(source, target) == 0 { return }
        guard errno == EXDEV else { throw VMJail.Failure(description: "moving \(source): \(String(cString: strerror(errno)))") }
        try DiskCopy.copy(from: source, to: target)
        unlink(source)
    }

    // MARK: delete

    public func deleteSnapshot(vm: String, name: String) throws(DaemonError) {
        do { try store.deleteSnapshot(vm: vm, name: name) } catch {
            if case DefinitionStore.Failure.notFound = error { throw .noSuchSnapshot(name, of: vm) }
            throw .internal("deleting the snapshot: \(error)")
        }
        // A VM restored from it keeps its memory file mapped (and, jailed, linked): removing the names is safe.
        let directory = snapshotDirectory(vm: vm, name: name)
        do { try FileManager.default.removeItem(atPath: directory.path) } catch {
            logger.warning("snapshot files not removed", metadata: ["path": "\(directory.path)", "error": "\(error)"])
        }
        // The VM's folder goes with its last snapshot (rmdir refuses a folder that is not empty).
        rmdir(snapshotsDirectory + "/" + vm)
        logger.info("snapshot deleted", metadata: ["vm": "\(vm)", "snapshot": "\(name)"])
    }

    // MARK: restore

    /// Refuses a snapshot whose disks are gone or changed size since: the
    /// guest's memory describes disks of the recorded sizes.
    func checkDisks(_ row: DefinitionStore.SnapshotRow) throws(DaemonError) {
        for (index, disk) in row.definition.disks.enumerated() {
            let path = disk.path ?? ""
            guard let size = Self.fileSize(path) else {
                throw .conflict("cannot restore snapshot '\(row.name)' of '\(row.vm)': its disks[\(index)] '\(path)' no longer exists")
            }
            if index < row.diskBytes.count, size != row.diskBytes[index] {
                throw .conflict("cannot restore snapshot '\(row.name)' of '\(row.vm)': its disks[\(index)] '\(path)' is \(size) bytes now and was \(row.diskBytes[index]) when the snapshot was taken; the guest would see another disk")
            }
        }
    }

    /// Restores snapshot `name` of `vm` into `vm` itself (which must not be
    /// running) or, with `clone`, into a new VM of that name. Returns the
    /// name of the VM now running. `taps` (with `clone` only): the clone's
    /// taps, one per NIC, instead of the original's.
    public func restoreSnapshot(vm: String, name: String, as clone: String?, taps: [String]? = nil) throws(DaemonError) -> String {
        try DefinitionValidator.validateName(vm)
        try DefinitionValidator.validateName(name, what: "snapshot")
        if let clone { try DefinitionValidator.validateName(clone) }
        if taps != nil && clone == nil {
            throw .badRequest("taps are given to a new VM only: restore with \"as\" (--as NEW), or `swiftlet edit \(vm)` to change its taps for its next cold start")
        }
        let found: DefinitionStore.SnapshotRow?
        do { found = try store.snapshot(vm: vm, name: name) } catch { throw .internal("reading the database: \(error)") }
        guard let row = found else { throw .noSuchSnapshot(name, of: vm) }
        let directory = snapshotDirectory(vm: vm, name: name)
        for file in [directory.state, directory.memory] where access(file, R_OK) != 0 {
            throw .conflict("snapshot '\(name)' of '\(vm)' lacks its file \(file); delete it with `swiftlet snapshot-delete \(vm) \(name)`")
        }
        try checkDisks(row)
        let files = SnapshotFiles(state: directory.state, memory: directory.memory)
        let target: String
        if let clone {
            target = try restoreClone(row, files: files, as: clone, taps: taps)
        } else {
            let current: DefinitionStore.Row?
            do { current = try store.get(vm) } catch { throw .internal("reading the database: \(error)") }
            guard let current else { throw .noSuchVM(vm) }
            if isActive(vm) {
                throw .conflict("VM '\(vm)' is running; `swiftlet destroy \(vm)` first, or restore into a new VM with --as NAME")
            }
            // The machine is the snapshot's: its definition, under the VM's own name and uuid.
            var definition = row.definition
            definition.uuid = current.definition.uuid
            try start(definition, restoring: files)
            target = vm
        }
        runtimes.withLock { table in
            if table[target]?.pid != nil { table[target]?.reason = "restored from snapshot '\(name)' of '\(vm)'" }
        }
        count("restores")
        logger.info("snapshot restored", metadata: ["vm": "\(vm)", "snapshot": "\(name)", "into": "\(target)"])
        return target
    }

    /// A new VM from a snapshot: the snapshot's definition with the new
    /// name, a new uuid, a new MAC per NIC, autostart off, and its own copy
    /// of each writable disk (beside the original, named `CLONE-FILE`).
    /// Nothing is left behind when the restore fails.
    func restoreClone(_ row: DefinitionStore.SnapshotRow, files: SnapshotFiles, as clone: String, taps: [String]? = nil) throws(DaemonError) -> String {
        if let taps, taps.count != row.definition.nics.count {
            throw .badRequest("snapshot '\(row.name)' of '\(row.vm)' has \(row.definition.nics.count) NIC\(row.definition.nics.count == 1 ? "" : "s"), but \(taps.count) tap\(taps.count == 1 ? " was" : "s were") given; give one per NIC, in order")
        }
        let rows: [DefinitionStore.Row]
        do { rows = try store.all() } catch { throw .internal("reading the database: \(error)") }
        if rows.contains(where: { $0.definition.name == clone }) {
            throw .conflict("a VM named '\(clone)' already exists; restore with another --as name")
        }
        let writable = row.definition.disks.filter { !$0.readonly }
        if configuration.jail == nil && !writable.isEmpty {
            throw .conflict("cannot restore snapshot '\(row.name)' of '\(row.vm)' as a new VM: swiftletd runs with --no-jail, so the snapshot names '\(row.vm)'s writable disks by their host paths and the clone would write to them; run swiftletd jailed (every jail has its own /diskN), or restore into '\(row.vm)'")
        }
        var definition = row.definition
        definition.name = clone
        definition.uuid = nil
        definition.autostart = false
        var macs = Set(rows.flatMap { $0.definition.nics.compactMap { $0.mac?.lowercased() } })
        for index in definition.nics.indices {
            var mac = Self.randomMAC()
            while macs.contains(mac) { mac = Self.randomMAC() }
            macs.insert(mac)
            definition.nics[index].mac = mac
            // The restored guest's NIC is moved to this tap at load (network_overrides).
            if let taps {
                definition.nics[index].tap = taps[index]
                definition.nics[index].network = nil
            }
        }
        var copies: [String] = []
        func rollBack() { for path in copies { unlink(path) } }
        for index in definition.disks.indices where !definition.disks[index].readonly {
            let source = definition.disks[index].path ?? ""
            let copy = (source as NSString).deletingLastPathComponent + "/" + clone + "-" + (source as NSString).lastPathComponent
            do {
                let method = try DiskCopy.copy(from: source, to: copy) { done, total in
                    self.logger.info("copying a disk for a clone", metadata: ["vm": "\(clone)", "done": "\(done)", "total": "\(total)"])
                }
                logger.info("disk copied for a clone", metadata: ["vm": "\(clone)", "from": "\(source)", "to": "\(copy)", "method": "\(method.rawValue)"])
            } catch {
                rollBack()
                switch error {
                case .noSpace: throw .insufficientStorage("cannot restore as '\(clone)': \(error.description)")
                case .step(_, let path, let code) where code == EEXIST && path == copy:
                    throw .conflict("cannot restore as '\(clone)': its disk copy '\(copy)' already exists; remove it or pick another --as name")
                default: throw .internal("cannot restore as '\(clone)': \(error.description)")
                }
            }
            copies.append(copy)
            definition.disks[index].path = copy
        }
        let validated: VMDefinition
        do {
            validated = try DefinitionValidator.validate(definition)
            _ = try configuration.images.check(validated, mustExist: true)
            try store.insert(validated)
        } catch {
            rollBack()
            if case DefinitionStore.Failure.duplicate = error { throw .conflict("a VM named '\(clone)' already exists") }
            throw (error as? DaemonError) ?? .internal("storing the definition of '\(clone)': \(error)")
        }
        do {
            try start(validated, restoring: files)
        } catch {
            try? store.delete(clone)
            forget(clone)
            rollBack()
            throw error
        }
        return clone
    }

    /// A locally administered unicast MAC in QEMU's 52:54:00 range, as
    /// definitions use.
    static func randomMAC() -> String {
        "52:54:00:" + (0..<3).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined(separator: ":")
    }

    /// Sends `PUT /snapshot/load` (paths as the VMM sees them) once the new
    /// VMM's API answers; on a refusal the VMM, which has nothing to run, is
    /// stopped and the refusal returned.
    /// `definition`'s taps replace the saved ones (by interface id, as the
    /// VMM was started with them: the NIC's id, else `netN`), so that a
    /// clone given its own taps does not open the original's.
    func load(into name: String, pid: pid_t, paths: (state: String, memory: String), definition: VMDefinition) throws(DaemonError) {
        let taps = definition.nics.enumerated().map { index, nic in (interfaceID: nic.id ?? "net\(index)", tap: nic.tap ?? "") }
        let directory = runDirectory(name)
        var ready = false
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline && runtime(name).pid == pid {
            if (try? VMMControl(socketPath: directory.apiSocket, timeout: 1).state()) != nil { ready = true; break }
            usleep(2_000)
        }
        var failure: DaemonError?
        if !ready {
            let tail = Self.lastLines(of: directory.vmmLog, count: 3)
            failure = .internal("cannot restore '\(name)': swiftlet-vmm did not serve its API within 10 s\(tail.isEmpty ? "" : ": " + tail)")
        } else {
            do {
                // Loading maps the memory file and rebuilds the devices: allow time.
                // The guest agent's vsock socket moves to this VM's run folder; a
                // snapshot from before VMs had one loads without it.
                let vsockPath = configuration.jail == nil ? directory.vsockSocket : "/vsock.sock"
                let control = VMMControl(socketPath: directory.apiSocket, timeout: 120)
                do {
                    try control.loadSnapshot(statePath: paths.state, memoryPath: paths.memory, resume: true, taps: taps, vsockPath: vsockPath)
                } catch let refusal as VMMControl.Failure where refusal.description.contains("a snapshot with a vsock device") {
                    try control.loadSnapshot(statePath: paths.state, memoryPath: paths.memory, resume: true, taps: taps)
                }
            } catch let refusal as VMMControl.Failure where refusal.status.map({ (400..<500).contains($0) }) == true {
                failure = .conflict("cannot restore '\(name)': \(refusal.description)")
            } catch {
                failure = .internal("cannot restore '\(name)': the VMM API failed: \(error)")
            }
        }
        guard let failure else { return }
        runtimes.withLock { if $0[name]?.pid == pid { $0[name]?.stopRequest = .destroy } }
        kill(pid, SIGKILL)
        _ = waitUntilStopped(name, pid: pid, seconds: 5)
        throw failure
    }
}
