import ArchX86
import GuestMemory

/// Loads the kernel and initrd and writes the tables the guest reads at boot.
enum GuestBoot {
    static func load(kernel: [UInt8], initrd: [UInt8]?, configuration: VMConfiguration, memory: GuestMemory,
                     ramRanges: [(start: GuestAddress, size: UInt64)]) throws(VMMError) -> EntryState {
        throw .boot(step: "loading the kernel", message: "not yet implemented")
    }
}
