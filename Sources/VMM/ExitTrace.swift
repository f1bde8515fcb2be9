import Glibc
import KVM

/// `--trace-exits FILE`: where a run's time goes. Each vCPU thread records
/// its own exits (no sharing, no locks): for each exit kind and port or MMIO
/// address, how many, the time inside KVM_RUN that ended in it (guest code
/// plus KVM's own handling, emulation included) and the time the VMM then
/// spent before entering again. The run's phases come from a few clock
/// readings. The report is written when the VM stops (docs/performance.md).
public final class ExitTrace: @unchecked Sendable {
    // @unchecked: `entries`, `pending` and the clock fields are only touched
    // by the one vCPU thread that owns this trace while it runs, and read by
    // the main thread after that thread was joined.

    struct Key: Hashable, Comparable {
        var kind: VCPUExitKind
        /// The port, the MMIO address, or 0 for kinds without a place.
        var location: UInt64
        static func < (a: Key, b: Key) -> Bool { (a.kind.rawValue, a.location) < (b.kind.rawValue, b.location) }
    }

    struct Entry {
        var count: UInt64 = 0
        var inKVM: UInt64 = 0
        var inVMM: UInt64 = 0
    }

    /// Distinct places tracked; beyond this, exits count under "other" (a guest
    /// that touches every port must not grow the table without bound).
    static let maximumKeys = 512
    static let otherLocation = UInt64.max

    private var entries: [Key: Entry] = [:]
    private var pending: Key?
    private var returnedAt: UInt64 = 0
    private var enteredAt: UInt64 = 0
    private(set) var firstEntry: UInt64 = 0
    private(set) var lastExit: UInt64 = 0

    public init() {}

    /// Before KVM_RUN: the VMM's time since the last exit goes to that exit.
    @inline(__always)
    func entering() {
        let now = RunTiming.now()
        if firstEntry == 0 { firstEntry = now }
        if let key = pending {
            entries[key, default: Entry()].inVMM &+= now &- returnedAt
            pending = nil
        }
        enteredAt = now
    }

    /// After KVM_RUN returned with `exit`.
    @inline(__always)
    func returned(_ exit: VCPUExit) {
        let now = RunTiming.now()
        var key = Key(kind: exit.kind, location: Self.location(of: exit))
        if entries[key] == nil && entries.count >= Self.maximumKeys { key.location = Self.otherLocation }
        var entry = entries[key, default: Entry()]
        entry.count &+= 1
        entry.inKVM &+= now &- enteredAt
        entries[key] = entry
        pending = key
        returnedAt = now
        lastExit = now
    }

    static func location(of exit: VCPUExit) -> UInt64 {
        switch exit {
        case let .portIn(port, _, _), let .portOut(port, _, _): UInt64(port)
        case let .mmioRead(address, _), let .mmioWrite(address, _): address
        default: 0
        }
    }

    /// Merges the vCPUs' traces and renders the report.
    static func report(_ traces: [ExitTrace], processStart: UInt64, runStart: UInt64, stoppedAt: UInt64, reason: String) -> String {
        var merged: [Key: Entry] = [:]
        for trace in traces {
            for (key, entry) in trace.entries {
                merged[key, default: Entry()].count &+= entry.count
                merged[key, default: Entry()].inKVM &+= entry.inKVM
                merged[key, default: Entry()].inVMM &+= entry.inVMM
            }
        }
        let firstEntry = traces.map(\.firstEntry).filter { $0 != 0 }.min() ?? runStart
        let lastExit = traces.map(\.lastExit).max() ?? stoppedAt
        func ms(_ nanoseconds: UInt64) -> String { format(Double(nanoseconds) / 1e6, decimals: 3) }
        func span(_ from: UInt64, _ to: UInt64) -> UInt64 { to > from ? to - from : 0 }
        let totalExits = merged.values.reduce(UInt64(0)) { $0 &+ $1.count }
        let totalKVM = merged.values.reduce(UInt64(0)) { $0 &+ $1.inKVM }
        let totalVMM = merged.values.reduce(UInt64(0)) { $0 &+ $1.inVMM }
        var lines = [
            "# swiftlet-vmm --trace-exits: \(totalExits) exits on \(traces.count) vCPU(s); the run ended: \(reason)",
            "",
            "phase                                         ms",
            "process start -> VM built (KVM, memory, boot)  " + ms(span(processStart, runStart)),
            "VM built -> first KVM_RUN                      " + ms(span(runStart, firstEntry)),
            "first KVM_RUN -> last exit                     " + ms(span(firstEntry, lastExit)),
            "last exit -> VM stopped                        " + ms(span(lastExit, stoppedAt)),
            "",
            "vCPU time in KVM_RUN (guest + KVM)             " + ms(totalKVM),
            "vCPU time in the VMM handling exits            " + ms(totalVMM),
            "",
            "kind            where                exits    KVM ms    VMM ms   VMM us/exit",
        ]
        let sorted = merged.sorted { ($0.value.inKVM &+ $0.value.inVMM, $1.key) > ($1.value.inKVM &+ $1.value.inVMM, $0.key) }
        for (key, entry) in sorted {
            let place: String
            switch key.kind {
            case _ where key.location == otherLocation: place = "other"
            case .portIn, .portOut: place = "port 0x" + String(key.location, radix: 16)
            case .mmioRead, .mmioWrite: place = "0x" + String(key.location, radix: 16)
            default: place = "-"
            }
            let perExit = entry.count == 0 ? 0 : Double(entry.inVMM) / Double(entry.count) / 1e3
            lines.append(pad(key.kind.name, 16) + pad(place, 18) + padLeft(String(entry.count), 8) + padLeft(ms(entry.inKVM), 10)
                         + padLeft(ms(entry.inVMM), 10) + padLeft(format(perExit, decimals: 2), 14))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func pad(_ text: String, _ width: Int) -> String { text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count) }
    static func padLeft(_ text: String, _ width: Int) -> String { text.count >= width ? " " + text : String(repeating: " ", count: width - text.count) + text }

    /// Fixed-point text without Foundation (the VMM stays lean).
    static func format(_ value: Double, decimals: Int) -> String {
        guard value.isFinite, value >= 0 else { return "0" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = UInt64((value * scale).rounded())
        let whole = scaled / UInt64(scale), fraction = scaled % UInt64(scale)
        var digits = String(fraction)
        while digits.count < decimals { digits = "0" + digits }
        return decimals == 0 ? String(whole) : "\(whole).\(digits)"
    }
}

/// When this process started, as the VMM's clock reads it: the executable's
/// `main` touches it first thing (a global is initialized on first use).
public enum ProcessClock {
    public static let start = RunTiming.now()
}
