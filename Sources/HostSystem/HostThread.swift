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
    /// With seccomp filters configured, device workers are started by the
    /// launcher thread (see `ThreadLauncher`), not by the calling thread.
    public init(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemCallError) {
        let context = Unmanaged.passRetained(Context(body: body, name: name, lifecycle: lifecycle)).toOpaque()
        let result: (status: Int32, thread: pthread_t)
        if ThreadLauncher.startsThreads(of: SeccompFilters.ThreadKind(threadName: name)), let launcher = ThreadLauncher.shared.withLock({ $0 }) {
            result = try launcher.start(context)
        } else {
            result = Self.create(context)
        }
        guard result.status == 0 else {
            // SAFETY: the thread did not start, so the context is still ours to release.
            Unmanaged<Context>.fromOpaque(context).release()
            throw SystemCallError(call: "pthread_create \(name)", errno: Errno(rawValue: result.status))
        }
        handle = result.thread
    }

    /// pthread_create on the calling thread, running `context` (a retained Context).
    static func create(_ context: UnsafeMutableRawPointer) -> (status: Int32, thread: pthread_t) {
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { raw in
            // SAFETY: raw is the retained Context passed below; taken back exactly once.
            guard let raw else { return nil }
            let context = Unmanaged<Context>.fromOpaque(raw).takeRetainedValue()
            _ = ckvm_set_thread_name(String(context.name.prefix(15)))
            // Seccomp: the filter of the thread's kind, before it does anything.
            SeccompFilters.installOrExit(SeccompFilters.ThreadKind(threadName: context.name))
            context.body()
            context.lifecycle.state.withLock { $0.finished = true }
            return nil
        }, context)
        return (status, thread)
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

/// Starts device workers from a thread of its own. Linux stacks seccomp
/// filters: a thread runs under its own filter and those of the thread that
/// started it. Device workers start when the driver activates a device, on a
/// vCPU thread; started there, they would need the vCPU filter to allow
/// everything they do (disk and socket I/O). The launcher starts before any
/// filter is installed and does nothing but pthread_create, so its filter
/// (the workers' needs merged) is the only one stacked under theirs, and the
/// vCPU filter stays small.
final class ThreadLauncher: Sendable {
    final class Request: Sendable {
        let context: UInt  // a retained HostThread.Context, as a bit pattern
        let done: EventFD
        let result = Mutex<(status: Int32, thread: pthread_t)>((EAGAIN, pthread_t()))
        init(context: UInt) throws(SystemCallError) {
            self.context = context
            done = try EventFD(nonBlocking: false)
        }
    }

    static let shared = Mutex<ThreadLauncher?>(nil)
    /// The thread's name, and so its seccomp kind.
    static let threadName = SeccompFilters.ThreadKind.launcher.rawValue

    let wake: EventFD
    let queue = Mutex<[Request]>([])

    init() throws(SystemCallError) {
        wake = try EventFD(nonBlocking: false)
    }

    /// Whether threads of `kind` are started by the launcher (when it runs).
    static func startsThreads(of kind: SeccompFilters.ThreadKind) -> Bool {
        switch kind {
        case .main, .vcpu, .api, .launcher: false
        case .block, .net, .rng, .console, .vsock, .serialOut: true
        }
    }

    /// Starts the launcher (once); call before any filter is installed.
    static func startIfNeeded() throws(SystemCallError) {
        guard shared.withLock({ $0 == nil }) else { return }
        let launcher = try ThreadLauncher()
        _ = try HostThread(name: threadName) { launcher.serve() }
        shared.withLock { $0 = launcher }
    }

    /// Hands `context` to the launcher and waits until it has called pthread_create.
    func start(_ context: UnsafeMutableRawPointer) throws(SystemCallError) -> (status: Int32, thread: pthread_t) {
        let request = try Request(context: UInt(bitPattern: context))
        queue.withLock { $0.append(request) }
        try wake.signal()
        _ = try request.done.consume()
        return request.result.withLock { $0 }
    }

    /// The launcher's loop: never returns (the thread lives as long as the process).
    func serve() {
        while true {
            guard (try? wake.consume()) != nil else { continue }
            let pending = queue.withLock { queue -> [Request] in
                defer { queue = [] }
                return queue
            }
            for request in pending {
                // SAFETY: the requester passed a retained Context and waits for this answer.
                guard let context = UnsafeMutableRawPointer(bitPattern: request.context) else { continue }
                let result = HostThread.create(context)
                request.result.withLock { $0 = result }
                try? request.done.signal()
            }
        }
    }
}
