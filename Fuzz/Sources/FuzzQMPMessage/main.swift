import FuzzSupport
@_spi(Fuzzing) import QMP

// Every byte on a QMP socket comes from QEMU, which runs the guest and so is
// only trusted so far: any line must parse into a message or a QMPError,
// never a trap, a stack overflow or an unbounded allocation. The input is
// split at newlines as the client splits its stream.
runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    for line in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
        if let message = try? QMPMessage.parse(line: Array(line)), case .greeting(let version, _) = message {
            precondition(version.split(separator: ".").count == 3, "a greeting's version is major.minor.micro")
        }
    }
    return 0
}
