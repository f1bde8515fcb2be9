import CKVM
import Glibc
import GuestMemory
import HostSystem
import Virtio

/// The few Unix-socket calls the vsock backend makes. Every socket is
/// non-blocking and close-on-exec; sends use MSG_NOSIGNAL, so a host peer
/// that went away is an EPIPE, never a SIGPIPE.
enum UnixSocket {
    static let maximumPathLength = UnixStreamSocket.maximumPathLength

    static let socketFlags = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)

    /// `path` as a sockaddr_un, or nil if it is empty, too long or holds a NUL.
    static func address(_ path: String) -> sockaddr_un? { UnixStreamSocket.address(path) }

    /// Creates, binds and listens on a socket at `path`; returns it and the
    /// socket file's inode (so that only our own file is removed later).
    static func listen(path: String, backlog: Int32 = 128) throws(VsockError) -> (OwnedFileDescriptor, UInt64) {
        guard var address = address(path) else { throw .invalidSocketPath(path) }
        let descriptor: OwnedFileDescriptor
        do {
            descriptor = OwnedFileDescriptor(adopting: try systemCall("socket") { socket(AF_UNIX, socketFlags, 0) })
        } catch {
            throw .socket(step: "creating the socket", path: path, cause: error)
        }
        // SAFETY: address is a sockaddr_un passed with its own size.
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if bound != 0 {
            let error = Errno.current
            if error.rawValue == EADDRINUSE { throw .socketPathExists(path) }
            throw .socket(step: "bind", path: path, cause: SystemCallError(call: "bind", errno: error))
        }
        do {
            _ = try systemCall("listen") { Glibc.listen(descriptor.rawValue, backlog) }
        } catch {
            unlink(path)
            throw .socket(step: "listen", path: path, cause: error)
        }
        var status = stat()
        guard lstat(path, &status) == 0 else {
            throw .socket(step: "stat", path: path, cause: SystemCallError(call: "lstat", errno: .current))
        }
        return (descriptor, UInt64(status.st_ino))
    }

    /// Connects to the listener at `path` without blocking (a Unix stream
    /// connect completes at once or fails: ENOENT, ECONNREFUSED, EAGAIN when
    /// its backlog is full).
    static func connect(path: String) throws(SystemCallError) -> OwnedFileDescriptor {
        guard var address = address(path) else { throw SystemCallError(call: "connect", errno: Errno(rawValue: ENAMETOOLONG)) }
        let descriptor = OwnedFileDescriptor(adopting: try systemCall("socket") { socket(AF_UNIX, socketFlags, 0) })
        _ = try systemCall("connect \(path)") {
            // SAFETY: address is a sockaddr_un passed with its own size.
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(descriptor.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
        return descriptor
    }

    /// The next pending connection, or nil when there is none (EAGAIN).
    static func accept(_ listener: OwnedFileDescriptor) throws(SystemCallError) -> OwnedFileDescriptor? {
        let descriptor: Int32
        do {
            descriptor = try systemCall("accept") { Glibc.accept(listener.rawValue, nil, nil) }
        } catch where error.errno == .wouldBlock {
            return nil
        }
        let owned = OwnedFileDescriptor(adopting: descriptor)
        _ = try systemCall("fcntl F_SETFD") { fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        let flags = try systemCall("fcntl F_GETFL") { fcntl(descriptor, F_GETFL) }
        _ = try systemCall("fcntl F_SETFL") { fcntl(descriptor, F_SETFL, flags | O_NONBLOCK) }
        return owned
    }

    /// Copies up to `count` queued bytes without consuming them.
    static func peek(_ socket: OwnedFileDescriptor, count: Int) throws(SystemCallError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        // SAFETY: recv writes at most bytes.count bytes into the array's storage.
        let got = try bytes.withUnsafeMutableBytes { raw in
            Result { () throws(SystemCallError) in try systemCall("recv") { recv(socket.rawValue, raw.baseAddress, raw.count, Int32(MSG_PEEK)) } }
        }.get()
        return Array(bytes[..<got])
    }

    /// Consumes `count` bytes already known to be queued (after `peek`).
    static func discard(_ socket: OwnedFileDescriptor, count: Int) throws(SystemCallError) {
        var bytes = [UInt8](repeating: 0, count: count)
        // SAFETY: recv writes at most bytes.count bytes into the array's storage.
        _ = try bytes.withUnsafeMutableBytes { raw in
            Result { () throws(SystemCallError) in try systemCall("recv") { recv(socket.rawValue, raw.baseAddress, raw.count, 0) } }
        }.get()
    }

    /// readv into `vectors`; 0 is end of file.
    static func read(_ socket: OwnedFileDescriptor, into vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        try systemCall("readv") { readv(socket.rawValue, vectors.baseAddress, Int32(vectors.count)) }
    }

    /// sendmsg of `vectors` with MSG_NOSIGNAL; returns the bytes sent.
    static func send(_ socket: OwnedFileDescriptor, _ vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        var message = msghdr()
        // SAFETY: sendmsg only reads the iovecs, which the caller keeps alive for this call.
        message.msg_iov = UnsafeMutablePointer(mutating: vectors.baseAddress)
        message.msg_iovlen = vectors.count
        return try systemCall("sendmsg") { sendmsg(socket.rawValue, &message, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
    }

    /// Sends `bytes` (host memory); returns how many went.
    static func send(_ socket: OwnedFileDescriptor, bytes: UnsafeRawBufferPointer) throws(SystemCallError) -> Int {
        try systemCall("send") { Glibc.send(socket.rawValue, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
    }

    /// No more data goes to the peer: it reads end of file.
    static func shutdownWrite(_ socket: OwnedFileDescriptor) {
        _ = Glibc.shutdown(socket.rawValue, Int32(SHUT_WR))
    }
}
