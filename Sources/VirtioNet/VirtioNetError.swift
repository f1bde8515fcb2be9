import Glibc
import HostSystem

/// Why a network interface could not be set up. Each case names the tap and
/// the failing step; `description` says what to do about it.
public enum VirtioNetError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A tap name Linux would refuse (empty, too long, '/', whitespace).
    case invalidTapName(String, reason: String)
    /// Opening /dev/net/tun or attaching it to the tap failed.
    case openTap(tap: String, step: String, cause: SystemCallError)
    /// An adopted descriptor that is not a usable tap.
    case notATap(tap: String, reason: String)
    /// A tap ioctl after attaching (header size, offloads, non-blocking mode) failed.
    case configureTap(tap: String, step: String, cause: SystemCallError)
    /// A MAC address that is not six hex octets, or not a unicast address.
    case invalidMACAddress(String, reason: String)

    public var description: String {
        switch self {
        case let .invalidTapName(name, reason):
            "invalid tap name '\(name)': \(reason)"
        case let .openTap(tap, step, cause):
            "cannot open tap '\(tap)' (\(step)): \(Self.explain(cause.errno, step: step))"
        case let .notATap(tap, reason):
            "\(tap) is not a usable tap: \(reason)"
        case let .configureTap(tap, step, cause):
            "cannot configure tap '\(tap)' (\(step)): \(cause.errno)"
        case let .invalidMACAddress(text, reason):
            "invalid MAC address '\(text)': \(reason)"
        }
    }

    /// The usual reasons behind each errno, in words.
    static func explain(_ errno: Errno, step: String) -> String {
        switch errno.rawValue {
        case EPERM, EACCES:
            "permission denied: creating or attaching a tap needs CAP_NET_ADMIN, or a tap made for this user (ip tuntap add dev NAME mode tap user USER)"
        case ENOENT, ENODEV:
            step.contains("/dev/net/tun")
                ? "/dev/net/tun does not exist (load the tun module, or create the node: mknod /dev/net/tun c 10 200)"
                : "no such device (\(errno))"
        case EBUSY:
            "the tap is busy: another process has it open"
        case EINVAL where step.contains("IFF_MULTI_QUEUE"):
            "the tap exists without multi-queue support (recreate it with: ip tuntap add dev NAME mode tap multi_queue), or is not a tap"
        case EINVAL:
            "an interface with this name exists but is not a tap, or was made with other flags (it must be a tap with vnet headers allowed)"
        default:
            "\(errno)"
        }
    }
}
