import Testing
@testable import ControlAPI
@testable import VMM

@Suite("guest-caused metrics in Firecracker's layout")
struct GuestCausedMetricsTests {
    @Test("dropped console bytes are uart.missed_write_count; device log lines held back add up in logger.rate_limited_log_count")
    func droppedAndSuppressed() {
        let counters = VMCounters(
            exits: [], exitsPerVCPU: [],
            devices: [("virtio-rng 00:01.0", [("interrupts", 3), ("log_lines_suppressed", 5)]),
                      ("virtio-blk mmio@0xd0002000", [("log_lines_suppressed", 7), ("log_device_error", 8)])],
            uptimeNanoseconds: 0, pausedNanoseconds: 0, vcpuCount: 1, memorySize: 128 << 20,
            serialBytesOut: 100, serialBytesDropped: 42)
        let values = InstanceController.metricValues(counters)
        #expect(values["uart.write_count"] == 100)
        #expect(values["uart.missed_write_count"] == 42)
        #expect(values["logger.rate_limited_log_count"] == 12)
    }
}
