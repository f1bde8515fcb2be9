import VirtioVsock

/// The virtio-vsock device: the guest's CID and the host Unix socket of
/// Firecracker's hybrid vsock (docs/vsock.md).
public struct VsockConfiguration: Equatable, Sendable {
    public var guestCID: UInt64
    /// Host processes connect here (`CONNECT <port>\n`); guest connections
    /// to host port P go to `<udsPath>_P`.
    public var udsPath: String

    public init(guestCID: UInt64, udsPath: String) {
        self.guestCID = guestCID
        self.udsPath = udsPath
    }

    /// What `--vsock` takes, for help and error messages.
    public static let syntax = "cid=N,uds=PATH (N from 3 to 4294967294; PATH a Unix socket to create)"

    /// Parses `cid=N,uds=PATH` (either order). The path may contain commas:
    /// what follows `uds=` up to a `,cid=` is the path.
    public static func parse(_ text: String) throws(VMMError) -> VsockConfiguration {
        var cid: String?, path: String?
        var inPath = false
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            if part.hasPrefix("cid=") {
                guard cid == nil else { throw .invalidConfiguration(field: "vsock", value: text, expected: "'cid' at most once") }
                cid = String(part.dropFirst(4))
                inPath = false
            } else if part.hasPrefix("uds="), path == nil {
                path = String(part.dropFirst(4))
                inPath = true
            } else if inPath, let current = path {
                path = current + "," + part
            } else {
                throw .invalidConfiguration(field: "vsock", value: text, expected: syntax)
            }
        }
        guard let cid, let path else { throw .invalidConfiguration(field: "vsock", value: text, expected: syntax) }
        guard let number = UInt64(cid) else {
            throw .invalidConfiguration(field: "vsock cid", value: cid, expected: "a whole number from 3 to 4294967294")
        }
        let configuration = VsockConfiguration(guestCID: number, udsPath: path)
        try configuration.validate()
        return configuration
    }

    /// CID in range, path usable as a Unix socket address.
    public func validate() throws(VMMError) {
        guard (Vsock.minimumGuestCID...Vsock.maximumGuestCID).contains(guestCID) else {
            throw .invalidConfiguration(field: "vsock cid", value: "\(guestCID)", expected: "a whole number from 3 to 4294967294 (0-2 are reserved)")
        }
        let length = udsPath.utf8.count
        guard length > 0, length <= VsockSocketReservation.maximumPathLength, !udsPath.utf8.contains(0) else {
            throw .invalidConfiguration(field: "vsock uds path", value: udsPath,
                                        expected: "a path of 1 to \(VsockSocketReservation.maximumPathLength) bytes")
        }
    }

    /// Binds the socket (or finds it bound by this process) and builds the device.
    func makeDevice() throws(VMMError) -> VirtioVsockDevice {
        do {
            return try VirtioVsockDevice(guestCID: guestCID, listener: VsockHostListener.acquire(path: udsPath))
        } catch {
            throw .vsock(error)
        }
    }
}

/// The vsock socket bound ahead of the VM (Firecracker binds it at
/// `PUT /vsock`): holding this keeps it bound, and the device built later
/// for the same path uses it. Dropping the last holder removes the file.
public final class VsockSocketReservation: Sendable {
    /// sun_path's capacity less its terminating NUL.
    public static let maximumPathLength = 107

    public let path: String
    let listener: VsockHostListener

    /// Binds `path`; refuses a path that already exists.
    public init(path: String) throws(VMMError) {
        self.path = path
        do {
            listener = try VsockHostListener.acquire(path: path)
        } catch {
            throw .vsock(error)
        }
    }
}
