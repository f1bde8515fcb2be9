import Foundation
import Glibc

/// Where `swiftlet run` keeps its snapshots of the default guest, booted to
/// the point where it waits for a command (guest/init's
/// `swiftlet.agent`): `<guest folder>/snapshots/<key>/{state,memory}`.
/// The key covers everything that makes the snapshot: the guest image (its
/// folder is named by the hash of its inputs), the swiftlet-vmm binary (a
/// rebuilt VMM may encode device state differently) and the VM's shape (the
/// swiftlet-vmm options: vCPUs, memory, devices, command line).
struct GuestSnapshotCache {
    /// The swiftlet-vmm options a snapshot run accepts (with `--name value`
    /// or `--name=value`). Others boot cold: a disk's contents can change
    /// between runs while a restored guest would trust what it cached of
    /// them, and the process options (serial, API, logging) are this run's.
    static let snapshotOptions: Set<String> = ["cpus", "memory", "cmdline", "transport", "net", "vsock", "rng", "enable-pci"]

    let directory: URL

    /// Whether a run with the user's swiftlet-vmm options can use a snapshot.
    static func accepts(_ userOptions: [String]) -> Bool {
        return userOptions.allSatisfy { option in
            guard option.hasPrefix("--") else { return true }
            let name = option.dropFirst(2).split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
            return snapshotOptions.contains(name)
        }
    }
    var statePath: String { directory.appendingPathComponent("state").path }
    var memoryPath: String { directory.appendingPathComponent("memory").path }

    /// Both files present: a snapshot is written into a temporary folder
    /// and renamed into place whole.
    var isComplete: Bool {
        FileManager.default.fileExists(atPath: statePath) && FileManager.default.fileExists(atPath: memoryPath)
    }

    /// Nil when the options ask for something a snapshot run does not take
    /// (`userOptions` are the user's swiftlet-vmm options, before the guest's
    /// defaults are added).
    init?(guest: DefaultGuest, vmmBinary: String, userOptions: [String], vmmArguments: [String]) {
        guard Self.accepts(userOptions) else { return nil }
        // "agent": runs that go through the guest agent (an older cache held
        // guests waiting on their console instead).
        var material = "agent\0" + guest.directory.resolvingSymlinksInPath().path
        var info = stat()
        guard stat(vmmBinary, &info) == 0 else { return nil }
        material += "\0\(vmmBinary)\0\(info.st_size)\0\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
        material += "\0" + vmmArguments.joined(separator: "\0")
        let key = Self.hexHash(material, seed: 0xcbf2_9ce4_8422_2325) + Self.hexHash(material, seed: 0x6c62_272e_07bb_0142)
        directory = guest.directory.appendingPathComponent("snapshots").appendingPathComponent(key)
    }

    /// FNV-1a, 64 bits: a cache key, not a security boundary (the folder is
    /// the user's own).
    static func hexHash(_ text: String, seed: UInt64) -> String {
        var hash = seed
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        let digits = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// A new empty folder beside the final one, for a snapshot being written.
    func makeStagingDirectory() throws -> URL {
        let parent = directory.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: parent, withIntermediateDirectories: true)
        let staging = parent.appendingPathComponent(".staging-\(getpid())-\(directory.lastPathComponent)")
        try? FileManager.default.removeItem(at: staging)
        try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: false)
        return staging
    }

    /// Moves a finished staging folder into place. Another run that got
    /// there first wins; ours is dropped.
    func commit(staging: URL) {
        if rename(staging.path, directory.path) != 0 {
            try? FileManager.default.removeItem(at: staging)
        }
        pruneOldest()
    }

    /// How many snapshots one guest image keeps: each shape (options) has
    /// its own, and the least recently used go first.
    static let retainedSnapshots = 4

    /// Marks the snapshot as just used (its folder's modification time).
    func touch() { _ = utimes(directory.path, nil) }

    private func pruneOldest() {
        let parent = directory.deletingLastPathComponent()
        let keys: [URLResourceKey] = [.contentModificationDateKey]
        guard let entries = try? FileManager.default.contentsOfDirectory(at: parent, includingPropertiesForKeys: keys) else { return }
        let snapshots = entries
            .filter { !$0.lastPathComponent.hasPrefix(".") }
            .map { ($0, (try? $0.resourceValues(forKeys: Set(keys)).contentModificationDate) ?? .distantPast) }
            .sorted { $0.1 > $1.1 }
        for (old, _) in snapshots.dropFirst(Self.retainedSnapshots) where old.lastPathComponent != directory.lastPathComponent {
            try? FileManager.default.removeItem(at: old)
        }
    }

    /// Drops a snapshot that would not load (written by another VMM build,
    /// or damaged), so that the next run saves a good one.
    func discard() {
        let doomed = directory.deletingLastPathComponent().appendingPathComponent(".discard-\(getpid())-\(directory.lastPathComponent)")
        if rename(directory.path, doomed.path) == 0 { try? FileManager.default.removeItem(at: doomed) }
    }
}
