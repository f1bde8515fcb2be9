import Synchronization

/// Why a vCPU left KVM_RUN, as the counters name it.
public enum VCPUExitKind: Int, CaseIterable, Sendable {
    case portIn, portOut, mmioRead, mmioWrite, interrupted, halt, systemEvent, shutdown, internalError, failedEntry, unhandled

    /// The name used by the control API's metrics.
    public var name: String {
        switch self {
        case .portIn: "io_in"
        case .portOut: "io_out"
        case .mmioRead: "mmio_read"
        case .mmioWrite: "mmio_write"
        case .interrupted: "interrupted"
        case .halt: "halt"
        case .systemEvent: "system_event"
        case .shutdown: "shutdown"
        case .internalError: "internal_error"
        case .failedEntry: "failed_entry"
        case .unhandled: "unhandled"
        }
    }
}

/// One vCPU's exit counters. Only its own thread writes them, so an
/// increment is a relaxed load and store (no locked read-modify-write);
/// readers on other threads see a recent value. Each vCPU's counters are a
/// separate allocation, so vCPUs do not share cache lines through them.
final class VCPUExitCounters: Sendable {
    private let portIn = Atomic<UInt64>(0), portOut = Atomic<UInt64>(0)
    private let mmioRead = Atomic<UInt64>(0), mmioWrite = Atomic<UInt64>(0)
    private let interrupted = Atomic<UInt64>(0), halt = Atomic<UInt64>(0)
    private let systemEvent = Atomic<UInt64>(0), shutdown = Atomic<UInt64>(0)
    private let internalError = Atomic<UInt64>(0), failedEntry = Atomic<UInt64>(0)
    private let unhandled = Atomic<UInt64>(0)

    private func counter<T>(_ kind: VCPUExitKind, _ body: (borrowing Atomic<UInt64>) -> T) -> T {
        switch kind {
        case .portIn: body(portIn)
        case .portOut: body(portOut)
        case .mmioRead: body(mmioRead)
        case .mmioWrite: body(mmioWrite)
        case .interrupted: body(interrupted)
        case .halt: body(halt)
        case .systemEvent: body(systemEvent)
        case .shutdown: body(shutdown)
        case .internalError: body(internalError)
        case .failedEntry: body(failedEntry)
        case .unhandled: body(unhandled)
        }
    }

    @inline(__always)
    func count(_ kind: VCPUExitKind) {
        counter(kind) { $0.store($0.load(ordering: .relaxed) &+ 1, ordering: .relaxed) }
    }

    func value(_ kind: VCPUExitKind) -> UInt64 { counter(kind) { $0.load(ordering: .relaxed) } }
}

/// A snapshot of a running VM's counters for the control API.
public struct VMCounters: Sendable {
    /// Exits by kind, summed over vCPUs, in `VCPUExitKind.allCases` order.
    public var exits: [(kind: VCPUExitKind, count: UInt64)]
    /// Exits by kind for each vCPU (index = vCPU id).
    public var exitsPerVCPU: [[(kind: VCPUExitKind, count: UInt64)]]
    /// Per-device counters (name, counter name, value).
    public var devices: [(device: String, counters: [(name: String, value: UInt64)])]
    /// Nanoseconds since the VM started running (CLOCK_MONOTONIC).
    public var uptimeNanoseconds: UInt64
    /// Time spent paused so far, in nanoseconds.
    public var pausedNanoseconds: UInt64
    public var vcpuCount: Int
    public var memorySize: UInt64
    /// Bytes the guest wrote to COM1.
    public var serialBytesOut: UInt64
    /// Console bytes (COM1 and virtio-console) dropped because the output
    /// did not keep up and the 1 MiB buffer in front of it was full.
    public var serialBytesDropped: UInt64 = 0

    public var totalExits: UInt64 { exits.reduce(0) { $0 &+ $1.count } }
}
