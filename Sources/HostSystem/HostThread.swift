import CKVM
import Glibc
import Synchronization

/// A joinable POSIX thread for the data plane (vCPUs, I/O workers), which
/// blocks in syscalls and so does not belong on Swift's cooperative pool.
public final class HostThread: Sendable {
    /// Whether the body has returned and whether `join` was called. A
    /// signal must never reach a thread that has ended or been joined (a
    /// joined pthread_t is freed and may be reused), so `signal` sends only
    /// under this lock, which the thread takes as it ends and `join` takes
    /// before it frees the thread.
    private final class Lifecycle: Sendable {
        struct State {
            var finished = false
            var joined = false
        }
        let state = Mutex(State())
    }

    private final class Context: Sendable {
        let body: @Sendable () -> Void
        let name: String
        let lifecycle: Lifecycle
        init(body: @escaping @Sendable () -> Void, name: String, lifecycle: Lifecycle) {
            self.body = body
            self.name = name
            self.lifecycle = lifecycle
        }
    }

    public let handle: pthread_t
    private let lifecycle = Lifecycle()

    /// Starts `body` on a new thread named `name` (truncated to 15 bytes).
    public init(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemCallError) {
        let context = Unmanaged.passRetained(Context(body: body, name: name, lifecycle: lifecycle)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            // SAFETY: raw is the retained Context passed below; taken back exactly once.
            guard let raw else { return nil }
            let context = Unmanaged<Context>.fromOpaque(raw).takeRetainedValue()
            _ = ckvm_set_thread_name(String(context.name.prefix(15)))
            // --seccomp-filter: the thread's category filter, before it does anything.
            SeccompFilters.installOrExit(SeccompFilters.Category(threadName: context.name))
            context.body()
            context.lifecycle.state.withLock { $0.finished = true }
            return nil
        }, context)
        guard result == 0 else {
            // SAFETY: the thread did not start, so the context is still ours to release.
            Unmanaged<Context>.fromOpaque(context).release()
            throw SystemCallError(call: "pthread_create \(name)", errno: Errno(rawValue: result))
        }
        handle = thread
    }

    /// Sends `signal` to the thread (to interrupt a blocking syscall), unless
    /// its body has returned or it is being or has been joined. Returns
    /// whether the signal was sent.
    @discardableResult
    public func signal(_ signal: Int32) -> Bool {
        lifecycle.state.withLock { state in
            guard !state.finished, !state.joined else { return false }
            return pthread_kill(handle, signal) == 0
        }
    }

    /// Whether the thread's body has returned.
    public var hasFinished: Bool { lifecycle.state.withLock { $0.finished } }

    /// Waits for the thread to finish. Later calls return at once.
    public func join() {
        let first = lifecycle.state.withLock { state -> Bool in
            defer { state.joined = true }
            return !state.joined
        }
        guard first else { return }
        _ = pthread_join(handle, nil)
    }

    /// Unblocks `signal` for the calling thread. Threads inherit their
    /// creator's mask, and thread pools (and processes they spawn) often
    /// block everything, which would make a kick signal never arrive.
    public static func unblockSignal(_ signal: Int32) {
        var mask = sigset_t()
        sigemptyset(&mask)
        sigaddset(&mask, signal)
        _ = pthread_sigmask(SIG_UNBLOCK, &mask, nil)
    }

    /// Installs the no-op handler used to interrupt blocking syscalls.
    public static func installKickHandler(signal: Int32) throws(SystemCallError) {
        _ = try systemCall("sigaction \(signal)") { ckvm_install_kick_handler(signal) }
    }
}
