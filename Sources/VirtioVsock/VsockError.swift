import HostSystem

/// Why a vsock device cannot be configured or set up. Guest misbehaviour is
/// never one of these: it is counted (and answered with RST), or breaks the
/// queue through `reportDeviceError`.
public enum VsockError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The guest CID is 0, 1, 2 (reserved) or does not fit 32 bits.
    case invalidGuestCID(UInt64)
    /// The Unix socket path is empty or longer than sockaddr_un holds.
    case invalidSocketPath(String)
    /// Something already exists at the path (Firecracker refuses it too).
    case socketPathExists(String)
    /// A host call failed while setting the socket up.
    case socket(step: String, path: String, cause: SystemCallError)

    public var description: String {
        switch self {
        case let .invalidGuestCID(cid):
            "vsock guest CID \(cid) is invalid: expected \(Vsock.minimumGuestCID) to \(Vsock.maximumGuestCID)"
        case let .invalidSocketPath(path):
            "vsock socket path '\(path.prefix(200))' is invalid: expected 1 to \(UnixSocket.maximumPathLength) bytes"
        case let .socketPathExists(path):
            "vsock socket path '\(path)' already exists: remove it first (the VMM creates the socket and removes it at exit)"
        case let .socket(step, path, cause):
            "vsock socket '\(path)': \(step): \(cause)"
        }
    }
}
