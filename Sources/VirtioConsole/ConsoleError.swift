import HostSystem

public enum ConsoleError: Error, Sendable, CustomStringConvertible {
    /// The input-wakeup eventfd could not be created.
    case eventFD(cause: SystemCallError)

    public var description: String {
        switch self {
        case let .eventFD(cause): "creating the virtio-console input eventfd: \(cause)"
        }
    }
}
