import CKVM
import Glibc
import HostSystem
import Synchronization

/// The VMM's log: Firecracker's logger (`--log-path`, `--level`,
/// `--show-level`, `--show-log-origin`, `--module`, and `PUT /logger`).
///
/// Lines are Firecracker's: `2026-01-02T03:04:05.123456789 [ID:THREAD:LEVEL:FILE:LINE] message`,
/// where `:LEVEL` appears with show_level and `:FILE:LINE` with
/// show_log_origin. The target may be a regular file or a FIFO: it is opened
/// O_RDWR|O_NONBLOCK as Firecracker does, so opening a FIFO never waits for a
/// reader and a full FIFO loses lines (counted in `missedLines`) instead of
/// stalling the VMM. Without a target nothing is written: Firecracker writes
/// to stdout then, but Swiftlet's stdout is the guest's console.
public final class APILog: Sendable {
    /// Firecracker's levels, most severe first.
    public enum Level: Int, Comparable, Sendable, CaseIterable {
        case off = 0, error, warn, info, debug, trace

        /// Parses Firecracker's level names, case-insensitively ("Warning" and "Warn" alike).
        public init?(name: String) {
            switch name.lowercased() {
            case "off": self = .off
            case "error": self = .error
            case "warn", "warning": self = .warn
            case "info": self = .info
            case "debug": self = .debug
            case "trace": self = .trace
            default: return nil
            }
        }

        /// The tag show_level prints.
        public var tag: String {
            switch self {
            case .off: "OFF"
            case .error: "ERROR"
            case .warn: "WARN"
            case .info: "INFO"
            case .debug: "DEBUG"
            case .trace: "TRACE"
            }
        }

        public static func < (lhs: Level, rhs: Level) -> Bool { lhs.rawValue < rhs.rawValue }
        public static let names = "Error, Warning, Info, Debug, Trace, Off"
    }

    /// What the logger prints, besides the target.
    public struct Settings: Equatable, Sendable {
        /// Lines above this level are dropped (Firecracker's default is Info).
        public var level: Level = .info
        public var showLevel = false
        public var showOrigin = false
        /// Only lines from source modules starting with this (Swift module names: "ControlAPI", "VMMCommand").
        public var module: String?

        public init(level: Level = .info, showLevel: Bool = false, showOrigin: Bool = false, module: String? = nil) {
            self.level = level
            self.showLevel = showLevel
            self.showOrigin = showOrigin
            self.module = module
        }
    }

    struct State: Sendable {
        var target: OwnedFileDescriptor?
        var settings = Settings()
        var instanceID = "anonymous-instance"
    }

    let state: Mutex<State>
    let missed = Atomic<UInt64>(0)

    /// No target yet.
    public init(settings: Settings = Settings(), instanceID: String = "anonymous-instance") {
        state = Mutex(State(target: nil, settings: settings, instanceID: instanceID))
    }

    /// Logs to `path` (a file, created if missing, or a FIFO).
    public convenience init(path: String, settings: Settings = Settings(), instanceID: String = "anonymous-instance") throws(SystemCallError) {
        self.init(settings: settings, instanceID: instanceID)
        try open(path: path)
    }

    /// Opens `path` as Firecracker does (O_RDWR|O_NONBLOCK; a FIFO needs no
    /// reader yet). Appends to a regular file.
    public static func openTarget(_ path: String) throws(SystemCallError) -> OwnedFileDescriptor {
        try OwnedFileDescriptor.open(path, flags: O_RDWR | O_CREAT | O_APPEND | O_NONBLOCK, mode: 0o600)
    }

    /// Logs to `path` from now on.
    public func open(path: String) throws(SystemCallError) {
        let file = try Self.openTarget(path)
        state.withLock { $0.target = file }
    }

    /// Changes what is printed (PUT /logger: only the fields it names).
    public func update(level: Level? = nil, showLevel: Bool? = nil, showOrigin: Bool? = nil, module: String? = nil) {
        state.withLock { state in
            if let level { state.settings.level = level }
            if let showLevel { state.settings.showLevel = showLevel }
            if let showOrigin { state.settings.showOrigin = showOrigin }
            if let module { state.settings.module = module }
        }
    }

    public var settings: Settings { state.withLock { $0.settings } }
    public var hasTarget: Bool { state.withLock { $0.target != nil } }
    /// Lines that could not be written (a full FIFO, a broken file).
    public var missedLines: UInt64 { missed.load(ordering: .relaxed) }

    public func setInstanceID(_ id: String) { state.withLock { $0.instanceID = id } }

    public func error(_ message: @autoclosure () -> String, file: String = #fileID, line: Int = #line) {
        write(message(), level: .error, file: file, line: line)
    }

    public func warn(_ message: @autoclosure () -> String, file: String = #fileID, line: Int = #line) {
        write(message(), level: .warn, file: file, line: line)
    }

    public func debug(_ message: @autoclosure () -> String, file: String = #fileID, line: Int = #line) {
        write(message(), level: .debug, file: file, line: line)
    }

    /// Writes one line at `level` (Info unless said).
    public func write(_ message: @autoclosure () -> String, level: Level = .info, file: String = #fileID, line: Int = #line) {
        guard let (target, settings, instanceID) = state.withLock({ state -> (OwnedFileDescriptor, Settings, String)? in
            guard let target = state.target, level != .off, level <= state.settings.level else { return nil }
            return (target, state.settings, state.instanceID)
        }) else { return }
        if let module = settings.module, !file.hasPrefix(module) { return }
        var tag = "\(instanceID):\(Self.threadName())"
        if settings.showLevel { tag += ":\(level.tag)" }
        if settings.showOrigin { tag += ":\(file):\(line)" }
        // One write per line, so lines from different threads do not interleave.
        do {
            try target.writeAll(Array("\(Self.timestamp()) [\(tag)] \(Self.oneLine(message()))\n".utf8))
        } catch {
            missed.wrappingAdd(1, ordering: .relaxed)
        }
    }

    /// Control characters escaped, so that text from a request (a path, a
    /// body, a field name) can never start a line of its own in the log.
    static func oneLine(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) else { return text }
        var result = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    result += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    result.unicodeScalars.append(scalar)
                }
            }
        }
        return result
    }

    /// Local time with nanoseconds, as Firecracker's `LocalTime` prints it.
    static func timestamp() -> String {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var broken = tm()
        var seconds = time.tv_sec
        localtime_r(&seconds, &broken)
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return text.count >= width ? text : String(repeating: "0", count: width - text.count) + text
        }
        return "\(pad(Int(broken.tm_year) + 1900, 4))-\(pad(Int(broken.tm_mon) + 1, 2))-\(pad(Int(broken.tm_mday), 2))T"
            + "\(pad(Int(broken.tm_hour), 2)):\(pad(Int(broken.tm_min), 2)):\(pad(Int(broken.tm_sec), 2)).\(pad(Int(time.tv_nsec), 9))"
    }

    /// The calling thread's name ("api", "vcpu0", the program's for the main thread).
    static func threadName() -> String {
        var buffer = [CChar](repeating: 0, count: 32)
        guard ckvm_get_thread_name(&buffer) == 0 else { return "-" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "-" : name
    }
}
