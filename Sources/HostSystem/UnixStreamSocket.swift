import CKVM
import Glibc

/// A blocking Unix stream socket that can pass descriptors (SCM_RIGHTS):
/// the VMM's connection to a page-fault handler, and the handler's side.
/// Close-on-exec; sends use MSG_NOSIGNAL (a peer gone is EPIPE, never SIGPIPE).
public final class UnixStreamSocket: Sendable {
    public let descriptor: OwnedFileDescriptor

    /// sun_path holds 108 bytes including the terminating NUL.
    public static let maximumPathLength = 107

    public init(adopting descriptor: OwnedFileDescriptor) { self.descriptor = descriptor }

    static let streamFlags = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)

    /// `path` as a sockaddr_un, or nil if it is empty, too long or holds a NUL.
    public static func address(_ path: String) -> sockaddr_un? {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumPathLength, !bytes.contains(0) else { return nil }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        // SAFETY: copies at most 107 bytes into the 108-byte sun_path, leaving a NUL.
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: bytes) }
        return address
    }

    /// Connects to the listener at `path` (ENOENT: no socket there;
    /// ECONNREFUSED: nobody listens; ENAMETOOLONG: the path does not fit).
    /// Connecting and each send wait at most `timeoutSeconds` (SO_SNDTIMEO:
    /// a listener whose backlog is full, a peer that stopped reading; EAGAIN).
    public static func connect(path: String, timeoutSeconds: Int = 10) throws(SystemCallError) -> UnixStreamSocket {
        guard var address = address(path) else { throw SystemCallError(call: "connect \(path)", errno: Errno(rawValue: ENAMETOOLONG)) }
        let socket = UnixStreamSocket(adopting: OwnedFileDescriptor(adopting: try systemCall("socket") { Glibc.socket(AF_UNIX, streamFlags, 0) }))
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        _ = try systemCall("setsockopt SO_SNDTIMEO") {
            // SAFETY: setsockopt reads one timeval, passed with its own size.
            setsockopt(socket.descriptor.rawValue, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        _ = try systemCall("connect \(path)") {
            // SAFETY: address is a sockaddr_un passed with its own size.
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(socket.descriptor.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
        return socket
    }

    /// Binds a new socket at `path` (which must not exist: EADDRINUSE) and listens.
    public static func listen(path: String, backlog: Int32 = 1) throws(SystemCallError) -> UnixStreamSocket {
        guard var address = address(path) else { throw SystemCallError(call: "bind \(path)", errno: Errno(rawValue: ENAMETOOLONG)) }
        let socket = UnixStreamSocket(adopting: OwnedFileDescriptor(adopting: try systemCall("socket") { Glibc.socket(AF_UNIX, streamFlags, 0) }))
        _ = try systemCall("bind \(path)") {
            // SAFETY: address is a sockaddr_un passed with its own size.
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.bind(socket.descriptor.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
        _ = try systemCall("listen \(path)") { Glibc.listen(socket.descriptor.rawValue, backlog) }
        return socket
    }

    /// Waits for and accepts one connection (close-on-exec).
    public func accept() throws(SystemCallError) -> UnixStreamSocket {
        let raw = try systemCall("accept") { Glibc.accept(descriptor.rawValue, nil, nil) }
        let owned = OwnedFileDescriptor(adopting: raw)
        _ = try systemCall("fcntl F_SETFD") { fcntl(raw, F_SETFD, FD_CLOEXEC) }
        return UnixStreamSocket(adopting: owned)
    }

    /// Sends `bytes` in one sendmsg with `fd` attached (SCM_RIGHTS), as
    /// Firecracker's `send_with_fd`; a short send is an error (EMSGSIZE).
    public func send(_ bytes: [UInt8], attaching fd: Int32) throws(SystemCallError) {
        // SAFETY: sendmsg only reads the array's bytes during the call.
        let sent = try bytes.withUnsafeBytes { raw in
            Result { () throws(SystemCallError) in
                try systemCall("sendmsg") { ckvm_send_with_fd(descriptor.rawValue, raw.baseAddress, raw.count, fd, Int32(MSG_NOSIGNAL)) }
            }
        }.get()
        guard sent == bytes.count else { throw SystemCallError(call: "sendmsg (\(sent) of \(bytes.count) bytes)", errno: Errno(rawValue: EMSGSIZE)) }
    }

    /// What one `receive` got: the bytes, the descriptors passed with them
    /// (owned: closed unless kept), and whether the kernel dropped some.
    public struct Received: Sendable {
        public var bytes: [UInt8]
        public var descriptors: [OwnedFileDescriptor]
        public var controlTruncated: Bool
    }

    /// One recvmsg of at most `maximumBytes` bytes and at most
    /// `maximumDescriptors` descriptors (further ones are closed). No bytes
    /// means the peer closed the connection.
    public func receive(maximumBytes: Int, maximumDescriptors: Int = 4) throws(SystemCallError) -> Received {
        var bytes = [UInt8](repeating: 0, count: max(maximumBytes, 1))
        var fds = [Int32](repeating: -1, count: max(min(maximumDescriptors, 16), 1))
        var count: Int32 = 0
        var truncated: Int32 = 0
        let limit = Int32(min(maximumDescriptors, 16))
        // SAFETY: recvmsg writes at most bytes.count bytes and `limit` descriptors into the arrays' storage.
        let received = try bytes.withUnsafeMutableBytes { raw in
            fds.withUnsafeMutableBufferPointer { fdBuffer in
                Result { () throws(SystemCallError) in
                    try systemCall("recvmsg") {
                        ckvm_receive_with_fds(descriptor.rawValue, raw.baseAddress, raw.count, fdBuffer.baseAddress, limit, &count, &truncated)
                    }
                }
            }
        }.get()
        let owned = fds.prefix(Int(max(count, 0))).map { OwnedFileDescriptor(adopting: $0) }
        return Received(bytes: Array(bytes.prefix(received)), descriptors: owned, controlTruncated: truncated != 0)
    }

    /// The connected peer's process id (SO_PEERCRED), or nil.
    public func peerProcessID() -> pid_t? {
        var pid: Int32 = 0
        // SAFETY: the C side writes one Int32 through the pointer during the call.
        let result = try? systemCall("getsockopt SO_PEERCRED") { ckvm_peer_pid(descriptor.rawValue, &pid) }
        return result == nil ? nil : pid
    }
}
