import Devices
import Synchronization
import Testing

@Suite("Firecracker's boot-timer device")
struct BootTimerTests {
    @Test("the guest's byte 123 at offset 0 reports the boot time once; other writes and reads do nothing")
    func reportsOnce() {
        let timer = BootTimer()
        let reports = Mutex<[UInt64]>([])
        timer.onBootComplete { wall, _ in reports.withLock { $0.append(wall) } }
        timer.writeByte(0, 122)
        timer.writeByte(1, 123)
        withUnsafeBytes(of: UInt32(123)) { timer.write(offset: 0, from: $0) }  // not a byte access
        #expect(reports.withLock { $0.isEmpty })
        timer.writeByte(0, 123)
        timer.writeByte(0, 123)
        #expect(reports.withLock { $0.count } == 1, "a guest cannot make the VMM log without bound")
        #expect(timer.readByte(0) == 0)
    }
}
