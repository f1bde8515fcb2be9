/// How a VM run ended.
public enum VMExitReason: Equatable, Sendable, CustomStringConvertible {
    /// ACPI power-off (or the user quit the console).
    case poweredOff
    /// The guest asked for a reset (i8042, ACPI reset register, KVM system event).
    case rebootRequested
    /// The user quit with the console escape (Ctrl-A x) or a signal.
    case stoppedByUser
    /// SIGINT, SIGTERM or SIGHUP arrived.
    case stoppedBySignal(Int32)
    /// The guest cannot continue; the report names the vCPU, the cause and its registers.
    case crashed(report: String)

    public var description: String {
        switch self {
        case .poweredOff: "guest powered off"
        case .rebootRequested: "guest requested a reboot"
        case .stoppedByUser: "stopped by user"
        case let .stoppedBySignal(signal): "stopped by signal \(signal)"
        case let .crashed(report): "guest crashed: \(report)"
        }
    }
}
