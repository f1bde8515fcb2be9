import Devices
import Glibc
import HostSystem
import Synchronization

/// Discards guest serial output (`--serial none`).
final class DiscardingSerialOutput: SerialOutput {
    func write(_ bytes: [UInt8]) {}
}

/// Keeps guest serial output in memory (tests, and the last lines of a crash).
public final class CapturingSerialOutput: SerialOutput {
    private let bytes = Mutex<[UInt8]>([])
    public init() {}
    public func write(_ bytes: [UInt8]) { self.bytes.withLock { $0.append(contentsOf: bytes) } }
    public var text: String { bytes.withLock { String(decoding: $0, as: UTF8.self) } }
}

/// The terminal in raw mode for an interactive guest console, restored on
/// exit. Ctrl-A x quits; Ctrl-A Ctrl-A sends a literal Ctrl-A.
final class RawTerminal {
    static let escapeByte: UInt8 = 0x01
    private var saved = termios()
    private(set) var isActive = false

    /// Switches stdin to raw mode if it is a terminal.
    func enable() {
        guard isatty(STDIN_FILENO) == 1, tcgetattr(STDIN_FILENO, &saved) == 0 else { return }
        var raw = saved
        cfmakeraw(&raw)
        // Keep output post-processing so "\n" from the guest still starts a new line.
        raw.c_oflag = saved.c_oflag
        if tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0 { isActive = true }
    }

    func restore() {
        guard isActive else { return }
        _ = tcsetattr(STDIN_FILENO, TCSANOW, &saved)
        isActive = false
    }
}

/// Splits console input into bytes for the guest and a quit request, across
/// reads (the escape key may end one read and its command start the next).
struct ConsoleEscapeFilter {
    private var pendingEscape = false

    /// Returns the bytes to forward and whether the user asked to quit.
    mutating func filter(_ input: some Collection<UInt8>) -> (forward: [UInt8], quit: Bool) {
        var forward: [UInt8] = []
        forward.reserveCapacity(input.count)
        for byte in input {
            if pendingEscape {
                pendingEscape = false
                switch byte {
                case UInt8(ascii: "x"), UInt8(ascii: "X"): return (forward, true)
                case RawTerminal.escapeByte: forward.append(byte)
                default: forward.append(RawTerminal.escapeByte); forward.append(byte)
                }
            } else if byte == RawTerminal.escapeByte {
                pendingEscape = true
            } else {
                forward.append(byte)
            }
        }
        return (forward, false)
    }
}
