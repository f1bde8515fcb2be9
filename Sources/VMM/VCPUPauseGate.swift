import Glibc
import Synchronization

/// Parks vCPU threads outside KVM_RUN while the VM is paused. The vCPU side
/// costs one relaxed load per exit when no pause is pending; the controlling
/// side (the control API thread) asks, kicks the vCPUs out of the guest, and
/// waits until every running vCPU thread has parked. vCPUs never wait on the
/// API: they wait only while a pause is in force, and a stop releases them.
final class VCPUPauseGate: @unchecked Sendable {
    // @unchecked: every mutable field below is read and written with `mutex` held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    /// Fast-path flag for the vCPU loop; the authoritative state is `paused` under the mutex.
    private let requested = Atomic<Bool>(false)
    private var paused = false
    private var released = false
    /// vCPU threads that have started and not yet returned.
    private var running = 0
    private var parked = 0

    init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        // Timed waits measure CLOCK_MONOTONIC, immune to wall-clock changes.
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    // MARK: vCPU side

    /// A vCPU thread starts serving its vCPU.
    func vcpuStarted() { locked { running += 1 } }

    /// A vCPU thread is done (stop, crash); a pending pause no longer waits for it.
    func vcpuFinished() {
        locked {
            running -= 1
            pthread_cond_broadcast(condition)
        }
    }

    /// Called by a vCPU thread before each KVM_RUN: returns at once unless a
    /// pause is in force, else parks until resume or release.
    @inline(__always)
    func parkIfPaused() {
        guard requested.load(ordering: .relaxed) else { return }
        locked {
            guard paused, !released else { return }
            parked += 1
            pthread_cond_broadcast(condition)
            while paused && !released { pthread_cond_wait(condition, mutex) }
            parked -= 1
        }
    }

    /// Whether a pause is pending or in force (the vCPU loop's cheap check).
    @inline(__always)
    var pauseRequested: Bool { requested.load(ordering: .relaxed) }

    // MARK: Controller side

    var isPaused: Bool { locked { paused } }

    /// Runs `body` while every vCPU thread is parked, holding the gate's
    /// lock so that none can leave (a resume waits for `body`). Returns nil
    /// without calling `body` unless the VM is paused with every running
    /// vCPU parked (a `pause` that timed out, or a stop, does not count).
    func whileAllParked<T, Failure: Error>(_ body: () throws(Failure) -> T) throws(Failure) -> T? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        guard paused, !released, parked >= running else { return nil }
        return try body()
    }

    /// Asks every vCPU to park, calls `kick` (which forces them out of
    /// KVM_RUN) until they have, and waits at most `timeoutMilliseconds`.
    /// Returns false if some vCPU did not park in time (the pause stays
    /// requested; `resume` cancels it).
    func pause(timeoutMilliseconds: Int, kick: () -> Void) -> Bool {
        locked {
            paused = true
            requested.store(true, ordering: .sequentiallyConsistent)
        }
        return waitForParked(timeoutMilliseconds: timeoutMilliseconds, kick: kick)
    }

    private func waitForParked(timeoutMilliseconds: Int, kick: () -> Void) -> Bool {
        var remaining = timeoutMilliseconds
        while true {
            kick()
            // Re-kick every 20 ms: a signal that lands between the flag check
            // and KVM_RUN is covered by immediate_exit, but be robust anyway.
            let slice = min(remaining, 20)
            let done = locked { () -> Bool in
                if parked >= running || released { return true }
                var deadline = timespec()
                clock_gettime(CLOCK_MONOTONIC, &deadline)
                deadline.tv_nsec += slice * 1_000_000
                deadline.tv_sec += deadline.tv_nsec / 1_000_000_000
                deadline.tv_nsec %= 1_000_000_000
                while parked < running && !released {
                    if pthread_cond_timedwait(condition, mutex, &deadline) == ETIMEDOUT { break }
                }
                return parked >= running || released
            }
            if done { return true }
            remaining -= slice
            if remaining <= 0 { return false }
        }
    }

    /// Lets parked vCPUs continue.
    func resume() {
        locked {
            paused = false
            requested.store(false, ordering: .sequentiallyConsistent)
            pthread_cond_broadcast(condition)
        }
    }

    /// The VM is stopping: parked vCPUs return and nothing parks again.
    func release() {
        locked {
            released = true
            requested.store(false, ordering: .sequentiallyConsistent)
            pthread_cond_broadcast(condition)
        }
    }
}
