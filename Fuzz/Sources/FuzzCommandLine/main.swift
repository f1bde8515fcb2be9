import Boot
import FuzzSupport

// Kernel command lines come from users: appending any text either succeeds
// within the limit or fails with a BootError.
runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard let limitByte = bytes.first else { return 0 }
    var commandLine = KernelCommandLine(maximumLength: Int(limitByte) * 16)
    for piece in bytes.dropFirst().split(separator: 0) {
        try? commandLine.append(String(decoding: piece, as: UTF8.self))
    }
    precondition(commandLine.length <= commandLine.maximumLength, "command line exceeded its limit")
    _ = commandLine.nulTerminatedBytes
    return 0
}
