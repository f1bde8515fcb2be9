import CFuzzDriver
import Glibc
import GuestMemory

/// Runs libFuzzer with `body` as the test-one-input callback; never returns.
/// `body` must not crash, hang or leak for any input. Inputs run inside the
/// file-system sandbox (`FileSystemSandbox`): nothing they name outside a
/// throwaway /tmp can be created or written.
public func runFuzzer(_ body: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Never {
    FileSystemSandbox.enter()
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, body))
}

/// The fuzzer's input as an array (empty for a null pointer).
public func fuzzInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> [UInt8] {
    guard let start, count > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: start, count: count))
}

/// Guest RAM the size of a small real VM (256 MiB) with the x86 layout's hole:
/// 192 MiB at 0 and 64 MiB at 4 GiB. Buffers and rings a hostile driver
/// points anywhere in it are valid, so a device that sizes work by what the
/// guest claims (rather than bounding it) shows up here as an allocation or
/// RSS failure, which a few KiB of fuzz RAM would hide. Pages are only backed
/// once touched; targets reset just the window their input is copied to.
public let realisticGuestMemoryRanges: [(start: GuestAddress, size: UInt64)] = [
    (GuestAddress(0), 192 << 20), (GuestAddress(1 << 32), 64 << 20),
]

/// `realisticGuestMemoryRanges` mapped; the fuzzer cannot start without it.
public func makeRealisticGuestMemory() -> GuestMemory {
    do {
        return try GuestMemory(ranges: realisticGuestMemoryRanges)
    } catch {
        fatalError("fuzz: cannot map guest memory: \(error)")
    }
}
