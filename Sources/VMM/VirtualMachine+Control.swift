import Devices
import Glibc
import KVM
import Synchronization

/// What the control API may do to a VM while it runs. Every method is safe
/// to call from any thread and returns promptly: none waits for the guest,
/// and only `pause` waits (boundedly) for the vCPU threads to park.
extension VirtualMachine {
    /// Whether the vCPUs are held outside the guest by `pause`.
    public var isPaused: Bool { pauseGate.isPaused }

    /// Stops every vCPU outside KVM_RUN and keeps it there until `resume`.
    /// Returns false when some vCPU did not park within the timeout (the
    /// pause stays in force and `resume` undoes it).
    public func pause(timeoutMilliseconds: Int = 2000) -> Bool {
        let parked = pauseGate.pause(timeoutMilliseconds: timeoutMilliseconds) { kickVCPUs() }
        timing.withLock { timing in
            if timing.pausedAt == nil { timing.pausedAt = RunTiming.now() }
        }
        return parked
    }

    /// Lets paused vCPUs enter the guest again.
    public func resume() {
        // Devices held by a snapshot capture serve again before the guest runs.
        releaseDevicesAfterSnapshot()
        pauseGate.resume()
        timing.withLock { timing in
            if let since = timing.pausedAt {
                timing.pausedTotal &+= RunTiming.now() &- since
                timing.pausedAt = nil
            }
        }
    }

    /// Presses the ACPI power button: the guest is asked to shut down, and
    /// powers off (ending `run()` with `.poweredOff`) if it cooperates.
    public func pressPowerButton() {
        powerButton.trigger()
    }

    /// Ends the run now, as if the power were cut (`reason` is what `run()`
    /// returns). Returns false when the run had already been ended by
    /// something else (the guest, a signal), whose reason stands.
    @discardableResult
    public func stop(_ reason: VMExitReason = .stoppedByUser) -> Bool {
        requestStop(reason)
    }

    /// Whether the run has ended or is ending.
    public var hasStopped: Bool { exitReason.withLock { $0 } != nil }

    /// A snapshot of the counters.
    public func counters() -> VMCounters {
        let perVCPU = exitCounters.map { counters in
            VCPUExitKind.allCases.map { (kind: $0, count: counters.value($0)) }
        }
        let totals = VCPUExitKind.allCases.map { kind in
            (kind: kind, count: exitCounters.reduce(UInt64(0)) { $0 &+ $1.value(kind) })
        }
        let (uptime, paused) = timing.withLock { timing -> (UInt64, UInt64) in
            guard timing.startedAt > 0 else { return (0, 0) }
            let now = RunTiming.now()
            let current = timing.pausedAt.map { now &- $0 } ?? 0
            return (now &- timing.startedAt, timing.pausedTotal &+ current)
        }
        return VMCounters(
            exits: totals, exitsPerVCPU: perVCPU, devices: deviceCounters,
            uptimeNanoseconds: uptime, pausedNanoseconds: paused,
            vcpuCount: vcpus.count, memorySize: configuration.memorySize,
            serialBytesOut: serialCounter.bytes.load(ordering: .relaxed),
            serialBytesDropped: serialBuffer?.droppedBytes.load(ordering: .relaxed) ?? 0)
    }

    /// Per-device counters for the metrics: each virtio device, named by
    /// its type and where it is, its PCI address ("virtio-rng 00:01.0") or
    /// its virtio-mmio page ("virtio-rng mmio@0xd0001000"), then what its
    /// driver made the transport report (`log_*`, see `DeviceEventLog`).
    var deviceCounters: [(device: String, counters: [(name: String, value: UInt64)])] {
        let onPCI = (pci?.transports ?? []).map { transport in
            (device: "\(transport.device.deviceType) \(transport.address)", counters: transport.device.counters.snapshot + transport.device.deviceCounters + transport.events.counters)
        }
        let onMMIO = (mmio?.transports ?? []).map { transport in
            (device: "\(transport.device.deviceType) mmio@0x\(String(transport.base, radix: 16))", counters: transport.device.counters.snapshot + transport.device.deviceCounters + transport.events.counters)
        }
        return onPCI + onMMIO
    }

    /// Forces every vCPU out of KVM_RUN: immediate_exit covers a vCPU about
    /// to enter the guest, the signal one inside it.
    func kickVCPUs() {
        for vcpu in vcpus { vcpu.requestExit() }
        for thread in vcpuThreads.withLock({ $0 }) { thread.signal(Self.kickSignal) }
    }
}

/// Uptime and pause accounting (CLOCK_MONOTONIC nanoseconds).
struct RunTiming {
    var startedAt: UInt64 = 0
    var pausedAt: UInt64?
    var pausedTotal: UInt64 = 0

    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}

/// Passes COM1 output on and counts its bytes.
final class CountingSerialOutput: SerialOutput {
    let next: any SerialOutput
    let bytes = Atomic<UInt64>(0)

    init(_ next: any SerialOutput) { self.next = next }

    func write(_ bytes: [UInt8]) {
        self.bytes.wrappingAdd(UInt64(bytes.count), ordering: .relaxed)
        next.write(bytes)
    }
}

extension VCPUExit {
    /// The counter this exit increments.
    var kind: VCPUExitKind {
        switch self {
        case .portIn: .portIn
        case .portOut: .portOut
        case .mmioRead: .mmioRead
        case .mmioWrite: .mmioWrite
        case .interrupted: .interrupted
        case .halt: .halt
        case .systemEvent: .systemEvent
        case .shutdown: .shutdown
        case .internalError: .internalError
        case .failedEntry: .failedEntry
        case .unhandled: .unhandled
        }
    }
}
