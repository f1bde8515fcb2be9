import Synchronization
import Testing
import Virtio
import VirtioTestSupport

@Suite("device event log")
struct DeviceEventLogTests {
    @Test("every event is counted; each kind logs at most one line per interval, the next one saying how many were held back")
    func oneLinePerKindPerInterval() {
        let clock = ManualClock()
        let lines = LogCollector()
        let events = DeviceEventLog(intervalNanoseconds: 10_000_000_000, clock: clock.now, log: lines.sink)
        for round in 0..<1000 {
            events.record(.legacyDriverRefused, "legacy \(round)")
            events.record(.deviceError, "error \(round)")
        }
        #expect(lines.recorded == ["legacy 0", "error 0"])
        clock.advance(seconds: 10)
        events.record(.deviceError, "error again")
        #expect(lines.recorded.last == "error again (999 more like this were not logged)")
        #expect(events.count(.legacyDriverRefused) == 1000 && events.count(.deviceError) == 1001)
        #expect(events.count(.notifierFailure) == 0)
        let counters = Dictionary(uniqueKeysWithValues: events.counters.map { ($0.name, $0.value) })
        #expect(counters["log_legacy_driver_refused"] == 1000 && counters["log_lines_suppressed"] == 1998)
    }
}
