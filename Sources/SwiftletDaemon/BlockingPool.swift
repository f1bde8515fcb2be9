import Foundation
import Synchronization

/// A fixed number of threads for the daemon's blocking work (GRDB, a VMM's
/// control API over its socket, console files, waits for a VMM to stop), so
/// that async Hummingbird handlers never block the cooperative pool and a
/// burst of requests never becomes a burst of threads. Work beyond
/// `maximumQueued` waiting items is refused (503) rather than queued without
/// bound.
public final class BlockingPool: Sendable {
    public let name: String
    public let threadCount: Int
    public let maximumQueued: Int

    private struct State {
        var jobs: [@Sendable () -> Void] = []
        var head = 0
        var stopped = false
        var queued: Int { jobs.count - head }
    }
    private let state = Mutex(State())
    /// One signal per queued job (and one per thread at shutdown).
    private let available = DispatchSemaphore(value: 0)

    public init(name: String, threads: Int, maximumQueued: Int) {
        self.name = name
        self.threadCount = max(1, threads)
        self.maximumQueued = max(1, maximumQueued)
        for index in 0..<threadCount {
            let thread = Thread { [self] in work() }
            thread.name = "\(name)-\(index)"
            thread.stackSize = 512 * 1024
            thread.start()
        }
    }

    private func work() {
        while true {
            available.wait()
            let job = state.withLock { state -> (@Sendable () -> Void)? in
                guard state.head < state.jobs.count else { return nil }
                let job = state.jobs[state.head]
                state.head += 1
                // Drop finished slots once they are most of the array.
                if state.head > 64 && state.head * 2 > state.jobs.count {
                    state.jobs.removeFirst(state.head)
                    state.head = 0
                }
                return job
            }
            guard let job else {
                if state.withLock({ $0.stopped }) { return }
                continue
            }
            job()
        }
    }

    /// Runs `body` on one of the pool's threads and returns its result;
    /// `.unavailable` when `maximumQueued` jobs already wait.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let job: @Sendable () -> Void = {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }
            let accepted = state.withLock { state -> Bool in
                guard !state.stopped, state.queued < maximumQueued else { return false }
                state.jobs.append(job)
                return true
            }
            if accepted {
                available.signal()
            } else {
                continuation.resume(throwing: DaemonError.unavailable(
                    "swiftletd is busy: \(maximumQueued) \(name) requests are already waiting; retry shortly"))
            }
        }
    }

    /// Lets the threads end once the queue is empty (tests; the daemon's pools live as long as it).
    public func stop() {
        state.withLock { $0.stopped = true }
        for _ in 0..<threadCount { available.signal() }
    }
}
