import Glibc
import Synchronization

/// The kinds of event a guest driver can cause a transport to log, each
/// counted in the device's metrics (`log_` + the name) and logged at most
/// once per interval.
public enum DeviceEventKind: Int, CaseIterable, Sendable {
    /// FEATURES_OK without VERSION_1: a legacy-only driver, refused.
    case legacyDriverRefused
    /// FEATURES_OK with feature bits the device did not offer, refused.
    case featuresRefused
    /// DRIVER_OK refused: a queue's size or rings were invalid.
    case driverOKRefused
    /// The device reported a broken queue or failed to start (DEVICE_NEEDS_RESET).
    case deviceError
    /// A queue notifier (ioeventfd) could not be registered; notifications
    /// then go through user space.
    case notifierFailure

    /// The metric's name.
    public var name: String {
        switch self {
        case .legacyDriverRefused: "legacy_driver_refused"
        case .featuresRefused: "features_refused"
        case .driverOKRefused: "driver_ok_refused"
        case .deviceError: "device_error"
        case .notifierFailure: "notifier_failure"
        }
    }
}

/// Counts what a guest makes a device report and logs each kind at most
/// once per `interval`: a driver that breaks the protocol in a loop (reset,
/// bad ring, DRIVER_OK, ...) would otherwise write a line per round into a
/// log nobody rotates. A line after a quiet spell says how many of its kind
/// were not logged.
public final class DeviceEventLog: Sendable {
    public static let defaultIntervalNanoseconds: UInt64 = 10_000_000_000

    struct Kind {
        var count: UInt64 = 0
        /// Events since the last logged line that were not logged.
        var unlogged: UInt64 = 0
        var lastLoggedAt: UInt64?
    }

    struct State {
        var kinds = [Kind](repeating: Kind(), count: DeviceEventKind.allCases.count)
        var suppressedLines: UInt64 = 0
    }

    let intervalNanoseconds: UInt64
    let clock: @Sendable () -> UInt64
    let log: @Sendable (String) -> Void
    let state = Mutex(State())

    /// `clock` gives monotonic nanoseconds (tests pass their own).
    public init(intervalNanoseconds: UInt64 = DeviceEventLog.defaultIntervalNanoseconds,
                clock: @escaping @Sendable () -> UInt64 = DeviceEventLog.monotonicNanoseconds,
                log: @escaping @Sendable (String) -> Void) {
        self.intervalNanoseconds = intervalNanoseconds
        self.clock = clock
        self.log = log
    }

    /// Counts one event of `kind`; logs `message` unless a line of this kind
    /// was logged less than an interval ago.
    public func record(_ kind: DeviceEventKind, _ message: @autoclosure () -> String) {
        let now = clock()
        let unlogged = state.withLock { state -> UInt64? in
            state.kinds[kind.rawValue].count &+= 1
            if let last = state.kinds[kind.rawValue].lastLoggedAt, now &- last < intervalNanoseconds {
                state.kinds[kind.rawValue].unlogged &+= 1
                state.suppressedLines &+= 1
                return nil
            }
            defer { state.kinds[kind.rawValue].unlogged = 0 }
            state.kinds[kind.rawValue].lastLoggedAt = now
            return state.kinds[kind.rawValue].unlogged
        }
        guard let unlogged else { return }
        log(unlogged == 0 ? message() : message() + " (\(unlogged) more like this were not logged)")
    }

    /// How many events of `kind` happened.
    public func count(_ kind: DeviceEventKind) -> UInt64 {
        state.withLock { $0.kinds[kind.rawValue].count }
    }

    /// Every kind's count (`log_<kind>`) and the lines not logged
    /// (`log_lines_suppressed`), for the metrics.
    public var counters: [(name: String, value: UInt64)] {
        state.withLock { state in
            DeviceEventKind.allCases.map { ("log_" + $0.name, state.kinds[$0.rawValue].count) }
                + [("log_lines_suppressed", state.suppressedLines)]
        }
    }

    @Sendable public static func monotonicNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}
