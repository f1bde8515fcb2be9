import ArchX86
import GuestMemory

/// Loads the kernel and initrd and writes the tables the guest reads at boot.
enum GuestBoot {
    static func load(kernel: [UInt8], initrd: [UInt8]?, configuration: VMConfiguration, memory: GuestMemory,
                     ramRanges: [(start: GuestAddress, size: UInt64)]) throws(VMMError) -> EntryState {
        // TEMPORARY: flat binary at 1 MiB until the Boot loaders land.
        do {
            try BootGDT.write(into: memory)
            try memory.write(bytes: kernel, at: Layout.highMemoryStart)
        } catch {
            throw .memory(step: "loading", cause: error)
        }
        return .protectedMode32(entry: Layout.highMemoryStart.rawValue, startInfo: 0)
    }
}
