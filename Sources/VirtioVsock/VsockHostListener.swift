import Glibc
import HostSystem
import Synchronization

/// The listening Unix socket at `uds_path`, where host processes connect
/// and write `CONNECT <port>\n`.
///
/// Firecracker binds it when the vsock device is configured and refuses a
/// path that exists; so does Swiftlet. One process-wide registry keeps each
/// path bound once: the control API binds at `PUT /vsock`, the device built
/// at start (and again after a guest reboot rebuilds the VM) gets the same
/// socket. When the last holder lets go, or the process exits, the socket
/// file is removed (only if it is still the file this process created).
public final class VsockHostListener: Sendable {
    public let path: String
    let descriptor: OwnedFileDescriptor
    /// The socket file's inode when it was bound.
    let inode: UInt64

    private init(path: String, descriptor: OwnedFileDescriptor, inode: UInt64) {
        self.path = path
        self.descriptor = descriptor
        self.inode = inode
    }

    /// The socket at `path`: the one this process already listens on, or a
    /// new one. A path that exists otherwise is refused.
    public static func acquire(path: String) throws(VsockError) -> VsockHostListener {
        try registry.withLock { (registry) throws(VsockError) -> VsockHostListener in
            if let live = registry.listeners[path]?.listener { return live }
            var status = stat()
            if lstat(path, &status) == 0 { throw .socketPathExists(path) }
            let (descriptor, inode) = try UnixSocket.listen(path: path)
            let listener = VsockHostListener(path: path, descriptor: descriptor, inode: inode)
            registry.listeners[path] = WeakListener(listener: listener, inode: inode)
            if !registry.exitHookInstalled {
                registry.exitHookInstalled = true
                atexit { VsockHostListener.removeAllSocketFiles() }
            }
            return listener
        }
    }

    deinit {
        Self.registry.withLock { registry in
            if registry.listeners[path]?.inode == inode { registry.listeners[path] = nil }
            Self.removeSocketFile(path: path, inode: inode)
        }
    }

    struct WeakListener: Sendable {
        weak var listener: VsockHostListener?
        let inode: UInt64
    }

    struct Registry: Sendable {
        var listeners: [String: WeakListener] = [:]
        var exitHookInstalled = false
    }

    static let registry = Mutex(Registry())

    static func removeSocketFile(path: String, inode: UInt64) {
        var status = stat()
        if lstat(path, &status) == 0, UInt64(status.st_ino) == inode, status.st_mode & S_IFMT == S_IFSOCK {
            unlink(path)
        }
    }

    /// At exit: the VMM ends, its sockets go (the descriptors close with the process).
    static func removeAllSocketFiles() {
        let entries = registry.withLock { registry in registry.listeners.map { ($0.key, $0.value.inode) } }
        for (path, inode) in entries { removeSocketFile(path: path, inode: inode) }
    }
}
