import Glibc
import Synchronization

/// Firecracker's boot-timer pseudo device (`--boot-timer`): a guest that
/// writes the byte 123 to its first register has finished booting, and the
/// VMM reports how long that took since the VM was built, in wall-clock and
/// process CPU time. Reads return 0. Only the first report of each boot is
/// delivered, so a guest cannot make the VMM log without bound.
public final class BootTimer: BusDevice {
    /// The value Firecracker's guest-side tooling writes when boot completes.
    public static let bootCompleteValue: UInt8 = 123

    /// Wall-clock and CPU microseconds from the VM's build to the guest's signal.
    public typealias Report = @Sendable (_ wallMicroseconds: UInt64, _ cpuMicroseconds: UInt64) -> Void

    let startWall: UInt64
    let startCPU: UInt64
    let reported = Atomic<Bool>(false)
    let handler = Mutex<Report?>(nil)

    /// Starts timing now.
    public init() {
        startWall = Self.microseconds(CLOCK_MONOTONIC)
        startCPU = Self.microseconds(CLOCK_PROCESS_CPUTIME_ID)
    }

    /// Where the report goes (set before the guest runs).
    public func onBootComplete(_ report: @escaping Report) {
        handler.withLock { $0 = report }
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        data.storeLittleEndian(0)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        // As Firecracker: one byte at offset 0.
        guard offset == 0, data.count == 1, data.first == Self.bootCompleteValue else { return }
        guard !reported.exchange(true, ordering: .relaxed) else { return }
        let wall = Self.microseconds(CLOCK_MONOTONIC) &- startWall
        let cpu = Self.microseconds(CLOCK_PROCESS_CPUTIME_ID) &- startCPU
        handler.withLock { $0 }?(wall, cpu)
    }

    static func microseconds(_ clock: clockid_t) -> UInt64 {
        var time = timespec()
        clock_gettime(clock, &time)
        return UInt64(time.tv_sec) &* 1_000_000 &+ UInt64(time.tv_nsec) / 1000
    }
}
