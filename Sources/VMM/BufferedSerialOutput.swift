import CKVM
import Devices
import Glibc
import HostSystem
import Synchronization

/// Guest console output (COM1 and virtio-console) to a file descriptor that
/// never blocks the writer, a vCPU or a device worker: bytes go into a
/// bounded buffer that a `serial-out` thread drains, and what does not fit
/// is dropped and counted (at most `capacity` bytes wait, plus what the
/// drain thread took and is writing: memory stays under twice it). A terminal nobody reads, a full pipe or a FIFO
/// without a reader can then no longer hold a vCPU (and, through it, the
/// VMM's stop).
///
/// The drain thread waits with epoll for the descriptor to take data or for
/// a wake-up (the same calls the device workers make, so the same seccomp
/// category fits it), and writes at most `pieceSize` bytes at a time: once
/// writable, a pipe takes that much without blocking. A regular file, which
/// epoll refuses, is always writable. `stop()` flushes what is buffered for
/// at most `flushTimeoutMilliseconds`, then drops the rest.
///
/// The thread makes these syscalls: rt_sigprocmask (once, at start),
/// epoll_wait (epoll_pwait in some libcs), epoll_ctl, write (the output),
/// read (the wake eventfd), futex (the buffer lock), clock_gettime (the
/// flush deadline, usually vDSO) and, through malloc, mmap/munmap/madvise.
final class BufferedSerialOutput: SerialOutput {
    static let defaultCapacity = 1 << 20
    static let pieceSize = 4096
    static let flushTimeoutMilliseconds: Int64 = 2000

    struct State {
        var pending: [UInt8] = []
        /// A wake-up was signalled and the drain thread has not yet found
        /// the buffer empty: later writes need not signal again.
        var wakePending = false
        var stopping = false
    }

    let descriptor: OwnedFileDescriptor
    let capacity: Int
    let state = Mutex(State())
    let wake: EventFD
    let epoll: Epoll
    /// The output cannot be watched with epoll (a regular file, /dev/null): it never blocks for long.
    let alwaysWritable: Bool
    static let wakeToken: UInt64 = 0
    static let outputToken: UInt64 = 1
    /// Bytes dropped because the buffer was full (or the output failed).
    let droppedBytes = Atomic<UInt64>(0)
    /// Times the drain thread woke from its idle wait (a hung-up output
    /// once made every wait return at once: this would climb without end).
    let idleWakeups = Atomic<UInt64>(0)
    let thread = Mutex<HostThread?>(nil)

    init(descriptor: OwnedFileDescriptor, capacity: Int = BufferedSerialOutput.defaultCapacity) throws(SystemCallError) {
        self.descriptor = descriptor
        self.capacity = max(capacity, 1)
        wake = try EventFD()
        epoll = try Epoll()
        try epoll.add(wake.descriptor.rawValue, token: Self.wakeToken)
        do {
            // Watched for EPOLLOUT only while there is something to write.
            try epoll.add(descriptor.rawValue, events: 0, token: Self.outputToken)
            alwaysWritable = false
        } catch where error.errno == Errno(rawValue: EPERM) {
            alwaysWritable = true
        }
        let started = try HostThread(name: "serial-out") { [self] in drain() }
        thread.withLock { $0 = started }
    }

    func write(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let signal = state.withLock { state -> Bool in
            let accepted = state.stopping ? 0 : min(capacity - state.pending.count, bytes.count)
            if accepted < bytes.count { droppedBytes.wrappingAdd(UInt64(bytes.count - accepted), ordering: .relaxed) }
            guard accepted > 0 else { return false }
            state.pending.append(contentsOf: bytes.prefix(accepted))
            guard !state.wakePending else { return false }
            state.wakePending = true
            return true
        }
        if signal { try? wake.signal() }
    }

    /// Flushes (bounded), stops and joins the drain thread; later writes are
    /// dropped. Idempotent.
    func stop() {
        state.withLock { $0.stopping = true }
        try? wake.signal()
        let stopped = thread.withLock { current -> HostThread? in
            defer { current = nil }
            return current
        }
        stopped?.join()
    }

    // MARK: The drain thread

    private func drain() {
        // The VM is built (and this thread started) before `run` blocks
        // SIGINT/SIGTERM/SIGHUP for its signalfd: block every signal here,
        // or the kernel could deliver one to this thread and kill the process.
        var all = sigset_t()
        sigfillset(&all)
        _ = pthread_sigmask(SIG_BLOCK, &all, nil)
        var buffer: [UInt8] = []
        var deadline: Int64?
        // The reader hung up or the output failed: no longer watched, everything is dropped.
        var outputGone = false
        while true {
            // Take everything buffered, leaving the emptied previous buffer (and its capacity) in its place.
            let stopping = state.withLock { state -> Bool in
                if state.pending.isEmpty { state.wakePending = false } else { swap(&state.pending, &buffer) }
                return state.stopping
            }
            if stopping && deadline == nil { deadline = Self.nowMilliseconds() + Self.flushTimeoutMilliseconds }
            if buffer.isEmpty {
                if stopping { return }
                waitForWake(outputGone: &outputGone)
                continue
            }
            var offset = 0
            while offset < buffer.count {
                guard !outputGone, waitUntilWritable(deadline: &deadline, outputGone: &outputGone) else { break }
                let count = min(Self.pieceSize, buffer.count - offset)
                // SAFETY: the slice lies within `buffer`, alive for the call.
                let written = buffer.withUnsafeBytes { raw in
                    try? descriptor.write(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + count)]))
                }
                // A closed terminal or pipe, or a full disk, must not stop the guest: drop the bytes.
                guard let written, written > 0 else { break }
                offset += written
            }
            if offset < buffer.count { droppedBytes.wrappingAdd(UInt64(buffer.count - offset), ordering: .relaxed) }
            buffer.removeAll(keepingCapacity: true)
        }
    }

    /// Blocks until `write` or `stop` signals the wake eventfd.
    private func waitForWake(outputGone: inout Bool) {
        let events = (try? epoll.wait(maxEvents: 2, timeout: -1)) ?? []
        idleWakeups.wrappingAdd(1, ordering: .relaxed)
        if events.contains(where: { $0.token == Self.outputToken }) { stopWatching(outputGone: &outputGone) }
        _ = try? wake.consume()
    }

    /// epoll reports a hung-up or failed descriptor even with no events
    /// asked for, so it leaves the set for good, or every wait would
    /// return at once and the thread spin.
    private func stopWatching(outputGone: inout Bool) {
        guard !outputGone else { return }
        outputGone = true
        try? epoll.remove(descriptor.rawValue)
    }

    /// Waits until the output takes data (true) or is broken, or the flush
    /// deadline set by `stop` has passed (false). A wake-up meanwhile only
    /// checks for a stop.
    private func waitUntilWritable(deadline: inout Int64?, outputGone: inout Bool) -> Bool {
        if alwaysWritable { return deadline.map { $0 > Self.nowMilliseconds() } ?? true }
        guard (try? epoll.modify(descriptor.rawValue, events: EPOLLOUT.rawValue, token: Self.outputToken)) != nil else { return false }
        var hungUp = false
        defer {
            if hungUp {
                stopWatching(outputGone: &outputGone)
            } else {
                try? epoll.modify(descriptor.rawValue, events: 0, token: Self.outputToken)
            }
        }
        while true {
            var timeout: Int32 = -1
            if let deadline {
                let left = deadline - Self.nowMilliseconds()
                guard left > 0 else { return false }
                timeout = Int32(min(left, Int64(Int32.max)))
            }
            guard let events = try? epoll.wait(maxEvents: 2, timeout: timeout) else { return false }
            for event in events where event.token == Self.outputToken {
                if event.events & EPOLLOUT.rawValue != 0 { return true }
                if event.events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 {
                    hungUp = true
                    return false
                }
            }
            if events.contains(where: { $0.token == Self.wakeToken }) {
                _ = try? wake.consume()
                if deadline == nil, state.withLock({ $0.stopping }) {
                    deadline = Self.nowMilliseconds() + Self.flushTimeoutMilliseconds
                }
            }
        }
    }

    private static func nowMilliseconds() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1000 + Int64(time.tv_nsec) / 1_000_000
    }
}
