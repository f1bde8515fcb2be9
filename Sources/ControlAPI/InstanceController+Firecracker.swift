import Devices
import Glibc
import HostSystem
import VMM

/// Firecracker's process-level behaviour around the handlers: request
/// counters and the metrics document, the logger and metrics settings,
/// start-up times.
extension InstanceController {
    /// Builds a machine from `configuration` (every boot, API or not).
    func buildMachine(_ configuration: VMConfiguration) throws(VMMError) -> VirtualMachine {
        let machine = try makeMachine(configuration)
        if let timer = machine.bootTimer {
            let log = self.log
            timer.onBootComplete { wall, cpu in
                log.write("Guest-boot-time = \(Self.rightAligned(wall)) us \(wall / 1000) ms, \(Self.rightAligned(cpu)) CPU us \(cpu / 1000) CPU ms")
            }
        }
        log.write("Successfully built the microVM (vcpus \(configuration.cpuCount), memory \(MemorySize.format(configuration.memorySize)))")
        return machine
    }

    /// A number right-aligned in 6 columns, as Firecracker's boot-time line prints it.
    static func rightAligned(_ value: UInt64) -> String {
        let text = String(value)
        return text.count >= 6 ? text : String(repeating: " ", count: 6 - text.count) + text
    }

    /// Firecracker's name for the resource in its request metrics.
    static func metricResource(_ operation: APIOperation) -> String? {
        let segment = operation.pathTemplate.split(separator: "/").first.map(String.init) ?? ""
        switch segment {
        case "": return operation == .describeInstance ? "instance_info" : nil
        case "actions": return "actions"
        case "boot-source": return "boot_source"
        case "cpu-config": return "cpu_cfg"
        case "drives": return "drive"
        case "logger": return "logger"
        case "machine-config": return "machine_cfg"
        case "metrics": return operation.method == "PUT" ? "metrics" : nil
        case "mmds": return "mmds"
        case "network-interfaces": return "network"
        case "vsock": return "vsock"
        case "version": return "vmm_version"
        case "serial": return "serial"
        case "pmem": return "pmem"
        default: return nil
        }
    }

    /// Counts a request as Firecracker's `get_api_requests`/`put_api_requests`/`patch_api_requests` do.
    func countRequest(method: String, operation: APIOperation?, failed: Bool) {
        guard let operation, let resource = Self.metricResource(operation) else { return }
        let group: String
        switch method {
        case "GET": group = "get_api_requests"
        case "PUT": group = "put_api_requests"
        case "PATCH": group = "patch_api_requests"
        default: return
        }
        state.withLock { state in
            state.requestCounts["\(group).\(resource)_count", default: 0] &+= 1
            if failed && group != "get_api_requests" { state.requestCounts["\(group).\(resource)_fails", default: 0] &+= 1 }
        }
    }

    /// A request used a deprecated part of Firecracker's API (the answer
    /// carries `Deprecation: true`): Firecracker's `deprecated_api` metric.
    func countDeprecatedCall() {
        state.withLock { $0.requestCounts["deprecated_api.deprecated_http_api_calls", default: 0] &+= 1 }
    }

    /// Records how long the process took to serve its API, from the
    /// jailer's `--start-time-us` (CLOCK_MONOTONIC µs at the exec) and
    /// `--start-time-cpu-us`/`--parent-cpu-time-us`, as Firecracker does.
    public func reportStartTimes(startMicroseconds: UInt64?, startCPUMicroseconds: UInt64?, parentCPUMicroseconds: UInt64?) {
        let now = Self.clockMicroseconds(CLOCK_MONOTONIC)
        let cpu = Self.clockMicroseconds(CLOCK_PROCESS_CPUTIME_ID)
        state.withLock { state in
            if let start = startMicroseconds { state.startupMicroseconds = now &- min(now, start) }
            if let start = startCPUMicroseconds {
                state.startupCPUMicroseconds = (cpu &- min(cpu, start)) &+ (parentCPUMicroseconds ?? 0)
            }
        }
    }

    static func clockMicroseconds(_ clock: clockid_t) -> UInt64 {
        var time = timespec()
        clock_gettime(clock, &time)
        return UInt64(time.tv_sec) &* 1_000_000 &+ UInt64(time.tv_nsec) / 1000
    }

    /// Applies the config file's `logger` and `metrics` sections (at start, before the VM is built).
    public func applyFileSettings() throws(APIError) {
        let (logger, metrics) = state.withLock { ($0.configuration.logger, $0.configuration.metrics) }
        try logger?.apply(to: log)
        try metrics?.apply(to: metricsSink)
    }

    /// Sets the Firecracker metrics target from the command line (`--metrics-path`).
    public func configureMetrics(path: String) throws(APIError) {
        try metricsSink.configure(path: path, emitID: false, properties: [])
    }

    /// Writes one line of Firecracker-layout metrics, if a target is set.
    @discardableResult
    func flushMetrics() -> Bool {
        metricsSink.flush(values: firecrackerMetricValues(), instanceID: instanceID)
    }

    /// The totals behind the metrics document: what Swiftlet counts, by Firecracker's names.
    func firecrackerMetricValues() -> [String: UInt64] {
        let (machine, counts, finished, startup, startupCPU, latencies) = state.withLock {
            ($0.machine, $0.requestCounts, $0.finishedRunMetrics, $0.startupMicroseconds, $0.startupCPUMicroseconds, $0.latencies)
        }
        var values = counts.merging(finished) { $0 &+ $1 }.merging(latencies) { $1 }
        values["api_server.process_startup_time_us"] = startup
        values["api_server.process_startup_time_cpu_us"] = startupCPU
        values["logger.missed_log_count"] = log.missedLines
        if let counters = machine?.counters() {
            values.merge(Self.metricValues(counters)) { $0 &+ $1 }
        }
        return values
    }

    /// One run's counters by Firecracker's metric names.
    static func metricValues(_ counters: VMCounters) -> [String: UInt64] {
        var values: [String: UInt64] = [:]
        for (kind, count) in counters.exits {
            switch kind {
            case .portIn: values["vcpu.exit_io_in"] = count
            case .portOut: values["vcpu.exit_io_out"] = count
            case .mmioRead: values["vcpu.exit_mmio_read"] = count
            case .mmioWrite: values["vcpu.exit_mmio_write"] = count
            case .internalError, .failedEntry, .unhandled: values["vcpu.failures", default: 0] &+= count
            default: break
            }
        }
        values["uart.write_count"] = counters.serialBytesOut
        values["uart.missed_write_count"] = counters.serialBytesDropped
        for device in counters.devices {
            let counter = { (name: String) in device.counters.first { $0.name == name }?.value ?? 0 }
            values["interrupts.triggers", default: 0] &+= counter("interrupts")
            // Device log lines a guest caused that the per-kind interval held back.
            values["logger.rate_limited_log_count", default: 0] &+= counter("log_lines_suppressed")
            // Device names start with the virtio type ("virtio-blk 00:02.0").
            if device.device.hasPrefix("virtio-blk") {
                values["block.read_bytes", default: 0] &+= counter("bytes_to_guest")
                values["block.write_bytes", default: 0] &+= counter("bytes_from_guest")
                values["block.queue_event_count", default: 0] &+= counter("notifications")
                values["block.execute_fails", default: 0] &+= counter("errors")
            } else if device.device.hasPrefix("virtio-net") {
                values["net.rx_bytes_count", default: 0] &+= counter("bytes_to_guest")
                values["net.tx_bytes_count", default: 0] &+= counter("bytes_from_guest")
                values["net.tx_queue_event_count", default: 0] &+= counter("notifications")
            } else if device.device.hasPrefix("virtio-rng") {
                values["entropy.entropy_bytes", default: 0] &+= counter("bytes_to_guest")
                values["entropy.entropy_event_count", default: 0] &+= counter("notifications")
            } else if device.device.hasPrefix("virtio-vsock") {
                values["vsock.rx_bytes_count", default: 0] &+= counter("bytes_to_guest")
                values["vsock.tx_bytes_count", default: 0] &+= counter("bytes_from_guest")
            }
        }
        return values
    }
}

/// `PUT /logger` and the config file's `logger`: Firecracker's `Logger`.
struct LoggerSettings: Equatable, Sendable {
    static let fields = ["log_path", "level", "show_level", "show_log_origin", "module"]

    var path: String?
    var level: APILog.Level?
    var showLevel: Bool?
    var showOrigin: Bool?
    var module: String?

    init(json fields: JSONFields) throws(APIError) {
        try fields.allowOnly(Self.fields)
        if let name = try fields.string("level") {
            guard let level = APILog.Level(name: name) else {
                throw .deserialization("Invalid LevelFilter `\(name.prefix(100))`, expected one of \(APILog.Level.names)")
            }
            self.level = level
        }
        path = try fields.string("log_path")
        showLevel = try fields.bool("show_level")
        showOrigin = try fields.bool("show_log_origin")
        module = try fields.string("module")
    }

    func apply(to log: APILog) throws(APIError) {
        if let path {
            do {
                try log.open(path: path)
            } catch {
                throw .badRequest("Logger error: Failed to open target file: \(APIError.osError(error.errno))")
            }
        }
        log.update(level: level ?? .info, showLevel: showLevel, showOrigin: showOrigin, module: module)
    }
}

/// `PUT /metrics` and the config file's `metrics`: Firecracker's `Metrics`.
struct MetricsSettings: Equatable, Sendable {
    static let fields = ["metrics_path", "emit_id", "properties"]

    static func == (lhs: MetricsSettings, rhs: MetricsSettings) -> Bool {
        lhs.path == rhs.path && lhs.emitID == rhs.emitID && lhs.properties.elementsEqual(rhs.properties) { $0 == $1 }
    }

    var path: String
    var emitID: Bool
    var properties: [(String, String)] = []

    init(json fields: JSONFields) throws(APIError) {
        try fields.allowOnly(Self.fields)
        path = try fields.requiredString("metrics_path")
        emitID = try fields.bool("emit_id") ?? false
        if let value = fields.value("properties") {
            guard case let .object(members) = value else { throw fields.mismatch("properties", value, "an object of strings") }
            for (key, member) in members {
                guard let text = member.stringValue else { throw fields.mismatch("properties.\(key)", member, "a string") }
                properties.append((key, text))
            }
        }
    }

    func apply(to sink: MetricsSink) throws(APIError) {
        try sink.configure(path: path, emitID: emitID, properties: properties)
    }
}
