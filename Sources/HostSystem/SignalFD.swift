import CKVM
import Glibc

/// Termination signals delivered as readable events instead of handlers, so
/// the event loop can stop the VM cleanly (terminal restored, threads joined).
public final class SignalFD: Sendable {
    public let descriptor: OwnedFileDescriptor

    /// Blocks `signals` in the calling thread (threads started afterwards
    /// inherit the mask) and opens a signalfd that reports them.
    public init(signals: [Int32]) throws(SystemCallError) {
        var mask = sigset_t()
        sigemptyset(&mask)
        for signal in signals { sigaddset(&mask, signal) }
        let result = pthread_sigmask(SIG_BLOCK, &mask, nil)
        guard result == 0 else { throw SystemCallError(call: "pthread_sigmask", errno: Errno(rawValue: result)) }
        descriptor = OwnedFileDescriptor(adopting: try systemCall("signalfd") {
            signalfd(-1, &mask, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
        })
    }

    /// The next pending signal's number, or nil if none is pending.
    public func next() -> Int32? {
        var info = signalfd_siginfo()
        // SAFETY: reads exactly one signalfd_siginfo into a local of that type.
        let count = withUnsafeMutableBytes(of: &info) { Glibc.read(descriptor.rawValue, $0.baseAddress, $0.count) }
        return count == MemoryLayout<signalfd_siginfo>.size ? Int32(bitPattern: info.ssi_signo) : nil
    }
}
