import Boot
import FuzzSupport
import GuestMemory

// Kernel images are user input: any file must load or fail with a BootError,
// never crash or write outside guest memory.
nonisolated(unsafe) let memory = try? GuestMemory(ranges: [(GuestAddress(0), 32 << 20)])

runFuzzer { start, count in
    guard let memory else { return 0 }
    let image = fuzzInput(start, count)
    if let loaded = try? KernelLoader.load(image: image, into: memory, highMemoryStart: GuestAddress(0x100000)),
       let header = loaded.setupHeader {
        // A header that loaded must also give a usable zero page and command line.
        _ = try? BootParams(setupHeader: header).bytes()
        _ = KernelCommandLine(for: header, capacity: 0x10000)
    }
    _ = try? SetupHeader.parse(image)
    return 0
}
