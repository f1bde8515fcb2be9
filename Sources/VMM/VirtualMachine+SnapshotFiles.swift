import Devices
import GuestMemory
import HostSystem
import KVM
import SnapshotFormat
import VirtioBlock

/// Where a snapshot load takes guest RAM from (Firecracker's `backend_type`).
public enum SnapshotMemoryBackend: String, Sendable {
    /// The memory file, mapped MAP_PRIVATE.
    case file = "File"
    /// A page-fault handler process at a Unix socket (userfaultfd).
    case uffd = "Uffd"
}

extension VirtualMachine {
    /// Saves this paused VM to two files: guest RAM to `memoryPath` (every
    /// region, see `writeMemoryFile`), then everything else to the state
    /// file at `statePath` (configuration, KVM state, memory layout, devices).
    /// Each file is written atomically; the state file is written last, so
    /// its presence means the memory file is complete. The VM must be paused
    /// with every vCPU parked (`pause()` returned true) and stays paused.
    ///
    /// A `diff` snapshot (the VM built with `trackDirtyPages`) writes only
    /// the pages written since the previous snapshot (or since boot or
    /// load) into the memory file, in place (`writeDirtyPages`); a full one
    /// with tracking starts the next diff from here.
    public func createSnapshot(statePath: String, memoryPath: String, diff: Bool = false) throws(VMMError) {
        guard isPaused else { throw .notPaused(action: "create a snapshot") }
        if diff && !configuration.trackDirtyPages {
            throw .notSnapshottable("a Diff snapshot needs dirty-page tracking: set track_dirty_pages in machine-config before boot (or in the snapshot load)")
        }
        // What the restore reopens: each disk's current image (a PATCH may
        // have swapped it) and its size, which the restore checks.
        var saved = configuration
        var diskSizes: [String: UInt64] = [:]
        for (index, disk) in saved.disks.enumerated() {
            guard let image = blockDevice(id: disk.id)?.disk else { continue }
            saved.disks[index].path = image.path
            // An explicit format follows the image (a PATCH may have swapped it); a probed one is probed again.
            saved.disks[index].format = disk.format == nil ? nil : image.format
            diskSizes[disk.id] = image.size
            // A qcow2 image's cached table updates: the restore reopens the file.
            do {
                try image.persistMetadata()
            } catch {
                throw .disk(error)
            }
        }
        for interface in saved.networkInterfaces {
            if case .descriptor = interface.tap {
                throw .notSnapshottable("network interface '\(interface.id)' uses an inherited tap descriptor (tap-fd), which a restoring process cannot reopen: name its tap instead")
            }
        }
        // Devices first, as Firecracker does: saving a device may raise an
        // interrupt, which must be in the KVM state read after it.
        let deviceSections = try captureDeviceSections()
        let kvmState = try captureKVMState()
        let layout = try pauseGate.whileAllParked { () throws(VMMError) -> GuestMemoryFileLayout in
            // Read (and cleared) even for a full snapshot: the next diff starts here.
            let written = try configuration.trackDirtyPages ? takeDirtyPages() : []
            do throws(GuestMemoryError) {
                return diff ? try memory.writeDirtyPages(to: memoryPath, dirty: written) : try memory.writeMemoryFile(to: memoryPath)
            } catch {
                throw .snapshotMemoryFile(path: memoryPath, cause: error)
            }
        }
        guard let layout else { throw .notPaused(action: "create a snapshot") }
        let machine = SavedMachine(configuration: saved, diskSizes: diskSizes, kvmState: kvmState, memoryLayout: layout,
                                   deviceSections: deviceSections)
        do {
            try SnapshotFile(sections: machine.sections()).write(to: statePath)
        } catch {
            throw .snapshotFile(path: statePath, cause: error)
        }
    }

    /// Per region, the pages the guest (KVM's dirty log) or the VMM wrote
    /// since the last call; both logs are cleared.
    func takeDirtyPages() throws(VMMError) -> [[UInt64]] {
        var result: [[UInt64]] = []
        for (slot, region) in memory.regions.enumerated() {
            var words: [UInt64]
            do {
                words = try handle.dirtyLog(slot: UInt32(slot), size: region.size)
            } catch {
                throw .kvm(error)
            }
            if let written = memory.takeWrittenPages(region: slot) {
                for index in words.indices where index < written.count { words[index] |= written[index] }
            }
            result.append(words)
        }
        return result
    }

    /// Builds a VM from a snapshot: `saved` (its state file, read with
    /// `SavedMachine.read`) and its guest RAM from `memoryPath` as
    /// `memoryBackend` says: the memory file mapped MAP_PRIVATE (`.file`),
    /// or anonymous RAM filled on demand by the page-fault handler
    /// listening on the Unix socket at `memoryPath` (`.uffd`, Firecracker's
    /// protocol: `GuestMemory(userfaultLayout:socketPath:)`). Disks and taps
    /// are reopened from the saved configuration; a disk whose size changed
    /// since the snapshot is refused. On any error nothing is left behind.
    /// `run()` resumes the guest.
    public convenience init(loading saved: SavedMachine, memoryPath: String, serialOutput: (any SerialOutput)? = nil,
                            memoryBackend: SnapshotMemoryBackend = .file) throws(VMMError) {
        // The saved configuration's values are checked before they size anything.
        try saved.configuration.validate()
        try Self.checkDisks(saved)
        for interface in saved.configuration.networkInterfaces {
            if case .descriptor = interface.tap {
                throw .notSnapshottable("network interface '\(interface.id)' has an inherited tap descriptor in the snapshot, which cannot be reopened")
            }
        }
        // The layout must be this configuration's RAM plan before anything is mapped.
        try Self.checkRestorable(saved.kvmState, saved.memoryLayout.regions.map { ($0.start.rawValue, $0.size) },
                                 configuration: saved.configuration)
        let memory: GuestMemory
        switch memoryBackend {
        case .file:
            do {
                memory = try GuestMemory(mappingFile: memoryPath, layout: saved.memoryLayout, trackingDirtyPages: saved.configuration.trackDirtyPages)
            } catch {
                throw .memory(step: "mapping the snapshot memory file", cause: error)
            }
        case .uffd:
            do {
                memory = try GuestMemory(userfaultLayout: saved.memoryLayout, socketPath: memoryPath,
                                         trackingDirtyPages: saved.configuration.trackDirtyPages)
            } catch {
                throw .memory(step: "handing guest memory to the Uffd page-fault handler", cause: error)
            }
        }
        try self.init(configuration: saved.configuration,
                      start: .restore(saved.kvmState, .mapped(memory), deviceSections: saved.deviceSections),
                      serialOutput: serialOutput)
    }

    /// Refuses a disk whose image is missing, unreadable or of another size
    /// than when the snapshot was taken.
    static func checkDisks(_ saved: SavedMachine) throws(VMMError) {
        for disk in saved.configuration.disks {
            let current: UInt64
            do {
                current = try DiskImage(path: disk.path, readOnly: true, format: disk.format, lockNow: false).size
            } catch {
                throw .disk(error)
            }
            if let size = saved.diskSizes[disk.id], size != current {
                throw .diskResized(id: disk.id, path: disk.path, saved: size, current: current)
            }
        }
    }
}
