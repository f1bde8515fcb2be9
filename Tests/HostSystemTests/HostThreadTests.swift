import Glibc
import HostSystem
import Synchronization
import Testing

@Suite("host threads")
struct HostThreadTests {
    @Test("a kick reaches a running thread, but never one whose body has returned or that was joined")
    func kicksOnlyLiveThreads() throws {
        try HostThread.installKickHandler(signal: SIGUSR1)
        let release = Atomic<Bool>(false)
        let running = try HostThread(name: "kick-test") {
            HostThread.unblockSignal(SIGUSR1)
            while !release.load(ordering: .acquiring) { usleep(1000) }
        }
        #expect(running.signal(SIGUSR1), "a live thread is signalled")
        release.store(true, ordering: .releasing)
        for _ in 0..<5000 where !running.hasFinished { usleep(1000) }
        #expect(running.hasFinished)
        #expect(!running.signal(SIGUSR1), "a thread whose body returned is not signalled")
        running.join()
        #expect(!running.signal(SIGUSR1), "a joined thread is not signalled (its pthread_t may be reused)")
        running.join()  // a second join returns at once instead of joining a freed thread
    }

    @Test("kicks racing a join are either sent before it or not at all")
    func kicksRacingJoin() throws {
        try HostThread.installKickHandler(signal: SIGUSR1)
        for _ in 0..<200 {
            let thread = try HostThread(name: "kick-race") { HostThread.unblockSignal(SIGUSR1) }
            let kicker = try HostThread(name: "kicker") {
                for _ in 0..<50 { thread.signal(SIGUSR1) }
            }
            thread.join()
            kicker.join()
            #expect(!thread.signal(SIGUSR1))
        }
    }
}
