import Glibc
import HostSystem
import Synchronization

/// Firecracker's metrics document (docs/metrics.md in Firecracker), which
/// `FlushMetrics`, the 60-second flush and the flush at exit write, one JSON
/// object per line, to the file or FIFO set with `PUT /metrics` or
/// `--metrics-path`. Every group and field Firecracker emits is present;
/// those Swiftlet has no counterpart for stay 0 (see
/// docs/firecracker-compatibility.md). As in Firecracker, counters are the
/// increase since the previous line, and "store" values (start-up times,
/// latencies, min/max) are absolute.
public enum FirecrackerMetricsLayout {
    static let latency = ["min_us", "max_us", "sum_us"]
    static func aggregate(_ name: String) -> [String] { latency.map { "\(name).\($0)" } }

    static let block = ["activate_fails", "cfg_fails", "no_avail_buffer", "event_fails", "execute_fails", "invalid_reqs_count",
                        "flush_count", "queue_event_count", "rate_limiter_event_count", "update_count", "update_fails",
                        "read_bytes", "write_bytes", "read_count", "write_count", "rate_limiter_throttled_events",
                        "io_engine_throttled_events", "remaining_reqs_count"] + aggregate("read_agg") + aggregate("write_agg")
    static let net = ["activate_fails", "cfg_fails", "no_rx_avail_buffer", "no_tx_avail_buffer", "event_fails",
                      "rx_queue_event_count", "rx_event_rate_limiter_count", "rx_rate_limiter_throttled", "rx_tap_event_count",
                      "rx_bytes_count", "rx_packets_count", "rx_fails", "rx_count", "tap_read_fails", "tap_write_fails",
                      "tx_bytes_count", "tx_malformed_frames", "tx_fails", "tx_count", "tx_packets_count", "tx_queue_event_count",
                      "tx_rate_limiter_event_count", "tx_rate_limiter_throttled", "tx_spoofed_mac_count", "tx_remaining_reqs_count"]
        + aggregate("tap_write_agg")

    /// Every group and its fields, in Firecracker's order; "a.b" is field b of nested object a.
    public static let groups: [(name: String, fields: [String])] = [
        ("api_server", ["process_startup_time_us", "process_startup_time_cpu_us"]),
        ("balloon", ["activate_fails", "inflate_count", "stats_updates_count", "stats_update_fails", "deflate_count", "event_fails",
                     "free_page_report_count", "free_page_report_freed", "free_page_report_fails", "free_page_hint_count",
                     "free_page_hint_freed", "free_page_hint_fails"]),
        ("block", block),
        ("deprecated_api", ["deprecated_http_api_calls"]),
        ("get_api_requests", ["instance_info_count", "machine_cfg_count", "mmds_count", "vmm_version_count", "hotplug_memory_count"]),
        ("i8042", ["error_count", "missed_read_count", "missed_write_count", "read_count", "reset_count", "write_count"]),
        ("uart", ["error_count", "flush_count", "missed_read_count", "missed_write_count", "read_count", "write_count",
                  "rate_limiter_dropped_bytes"]),
        ("latencies_us", ["full_create_snapshot", "diff_create_snapshot", "load_snapshot", "pause_vm", "resume_vm",
                          "vmm_full_create_snapshot", "vmm_diff_create_snapshot", "vmm_load_snapshot", "vmm_pause_vm", "vmm_resume_vm"]),
        ("logger", ["missed_metrics_count", "metrics_fails", "missed_log_count", "rate_limited_log_count"]),
        ("mmds", ["rx_accepted", "rx_accepted_err", "rx_accepted_unusual", "rx_bad_eth", "rx_invalid_token", "rx_no_token", "rx_count",
                  "tx_bytes", "tx_count", "tx_errors", "tx_frames", "connections_created", "connections_destroyed"]),
        ("net", net),
        ("patch_api_requests", ["drive_count", "drive_fails", "network_count", "network_fails", "machine_cfg_count", "machine_cfg_fails",
                                "mmds_count", "mmds_fails", "hotplug_memory_count", "hotplug_memory_fails", "pmem_count", "pmem_fails"]),
        ("put_api_requests", ["actions_count", "actions_fails", "boot_source_count", "boot_source_fails", "drive_count", "drive_fails",
                              "logger_count", "logger_fails", "machine_cfg_count", "machine_cfg_fails", "cpu_cfg_count", "cpu_cfg_fails",
                              "metrics_count", "metrics_fails", "network_count", "network_fails", "mmds_count", "mmds_fails",
                              "vsock_count", "vsock_fails", "pmem_count", "pmem_fails", "serial_count", "serial_fails",
                              "hotplug_memory_count", "hotplug_memory_fails"]),
        ("seccomp", ["num_faults"]),
        ("vcpu", ["exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures", "kvmclock_ctrl_fails"]
            + aggregate("exit_io_in_agg") + aggregate("exit_io_out_agg") + aggregate("exit_mmio_read_agg") + aggregate("exit_mmio_write_agg")),
        ("vmm", ["panic_count"]),
        ("signals", ["sigbus", "sigsegv", "sigxfsz", "sigxcpu", "sigpipe", "sighup", "sigill"]),
        ("vsock", ["activate_fails", "cfg_fails", "rx_queue_event_fails", "tx_queue_event_fails", "ev_queue_event_fails",
                   "muxer_event_fails", "conn_event_fails", "rx_queue_event_count", "tx_queue_event_count", "rx_bytes_count",
                   "tx_bytes_count", "rx_packets_count", "tx_packets_count", "conns_added", "conns_killed", "conns_removed",
                   "killq_resync", "tx_flush_fails", "tx_write_fails", "rx_read_fails"]),
        ("entropy", ["activate_fails", "entropy_event_fails", "entropy_event_count", "entropy_bytes", "host_rng_fails",
                     "entropy_rate_limiter_throttled", "rate_limiter_event_count"]),
        ("pmem", ["activate_fails", "cfg_fails", "event_fails", "queue_event_count", "rate_limiter_throttled_events",
                  "rate_limiter_event_count"]),
        ("interrupts", ["triggers", "config_updates"]),
        ("memory_hotplug", ["activate_fails", "queue_event_fails", "queue_event_count", "plug_count", "plug_bytes", "plug_fails"]
            + aggregate("plug_agg") + ["unplug_count", "unplug_bytes", "unplug_fails", "unplug_discard_fails"] + aggregate("unplug_agg")
            + ["state_count", "state_fails"] + aggregate("state_agg") + ["unplug_all_count", "unplug_all_fails"] + aggregate("unplug_all_agg")),
    ]

    /// Values written as they are rather than as the increase since the last line.
    static func isStore(_ key: String) -> Bool {
        key.hasPrefix("api_server.") || key.hasPrefix("latencies_us.") || key == "seccomp.num_faults" || key == "vmm.panic_count"
            || (key.hasPrefix("signals.") && key != "signals.sigpipe") || key.hasSuffix(".min_us") || key.hasSuffix(".max_us")
    }

    /// One metrics line. `values` holds "group.field" totals; missing ones are 0.
    /// `previous` holds the totals written last time (counters are emitted as increases).
    static func line(values: [String: UInt64], previous: [String: UInt64], timestampMilliseconds: UInt64,
                     instanceID: String?, properties: [(String, String)]) -> String {
        var members: [(String, String)] = [("utc_timestamp_ms", "\(timestampMilliseconds)")]
        if let instanceID { members.append(("id", JSONText.string(instanceID))) }
        if !properties.isEmpty {
            members.append(("properties", JSONText.object(properties.map { ($0.0, JSONText.string($0.1)) })))
        }
        for group in groups {
            var fields: [(String, String)] = []
            var nested: [(String, [(String, String)])] = []
            for field in group.fields {
                let key = "\(group.name).\(field)"
                let total = values[key] ?? 0
                let value = isStore(key) ? total : total &- min(total, previous[key] ?? 0)
                if let dot = field.firstIndex(of: ".") {
                    let outer = String(field[..<dot]), inner = String(field[field.index(after: dot)...])
                    if let index = nested.firstIndex(where: { $0.0 == outer }) {
                        nested[index].1.append((inner, "\(value)"))
                    } else {
                        nested.append((outer, [(inner, "\(value)")]))
                        fields.append((outer, ""))  // placeholder keeps the order
                    }
                } else {
                    fields.append((field, "\(value)"))
                }
            }
            let rendered = fields.map { name, value in
                (name, value.isEmpty ? JSONText.object(nested.first { $0.0 == name }?.1 ?? []) : value)
            }
            members.append((group.name, JSONText.object(rendered)))
        }
        return JSONText.object(members)
    }
}

/// Where Firecracker-layout metrics go: set once (PUT /metrics, the config
/// file's `metrics`, or `--metrics-path`), as in Firecracker.
final class MetricsSink: Sendable {
    struct State: Sendable {
        var target: OwnedFileDescriptor?
        var emitID = false
        var properties: [(String, String)] = []
        /// Totals written last time.
        var previous: [String: UInt64] = [:]
        /// Lines that could not be written.
        var missed: UInt64 = 0
        var failures: UInt64 = 0
    }

    let state = Mutex(State())

    var isConfigured: Bool { state.withLock { $0.target != nil } }

    /// Sets the target, once.
    func configure(path: String, emitID: Bool, properties: [(String, String)]) throws(APIError) {
        try state.withLock { (state) throws(APIError) in
            guard state.target == nil else { throw .badRequest("Metrics error: Reinitialization of metrics not allowed.") }
            do throws(SystemCallError) {
                state.target = try APILog.openTarget(path)
            } catch {
                throw .badRequest("Metrics error: Failed to open target file: \(APIError.osError(error.errno))")
            }
            state.emitID = emitID
            state.properties = properties
        }
    }

    /// Writes one line from `values` (nothing when no target is set).
    /// Returns false when a target is set but the line could not be written.
    @discardableResult
    func flush(values: [String: UInt64], instanceID: String) -> Bool {
        state.withLock { state in
            guard let target = state.target else { return true }
            var values = values
            values["logger.missed_metrics_count"] = state.missed
            values["logger.metrics_fails"] = state.failures
            var time = timespec()
            clock_gettime(CLOCK_REALTIME, &time)
            let milliseconds = UInt64(time.tv_sec) &* 1000 &+ UInt64(time.tv_nsec) / 1_000_000
            let text = FirecrackerMetricsLayout.line(values: values, previous: state.previous, timestampMilliseconds: milliseconds,
                                                     instanceID: state.emitID ? instanceID : nil, properties: state.properties)
            do {
                try target.writeAll(Array((text + "\n").utf8))
                state.previous = values
                return true
            } catch {
                state.missed &+= 1
                state.failures &+= 1
                return false
            }
        }
    }
}
