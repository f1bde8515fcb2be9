import Foundation
import Glibc
import Testing
@testable import ControlAPI
@testable import VMM

/// The server over a real Unix socket (no KVM: the VM is never started).
@Suite("Control API server", .serialized)
struct APIServerTests {
    static func socketPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-unit-\(getpid())-\(name).sock").path
    }

    static func makeServer(_ path: String) throws -> APIServer {
        let controller = try InstanceController(instanceID: "srv", vmmVersion: "0.1.0", configuration: InstanceConfiguration())
        return try APIServer(path: path, controller: controller, limits: .init(maximumHeaderBytes: 1024, maximumBodyBytes: 256))
    }

    /// Sends `bytes` on one connection and reads until the server closes it
    /// or `expectedResponses` status lines have arrived.
    static func exchange(_ path: String, _ text: String, expectedResponses: Int) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(connected == 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var received = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        while received.components(separatedBy: "HTTP/1.1 ").count - 1 < expectedResponses || !received.hasSuffix("}") && !received.hasSuffix("\r\n\r\n") {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            received += String(decoding: buffer[..<count], as: UTF8.self)
        }
        return received
    }

    @Test("the socket is mode 0600 and removed at shutdown")
    func socketFile() throws {
        let path = Self.socketPath("mode")
        let server = try Self.makeServer(path)
        var status = stat()
        #expect(lstat(path, &status) == 0)
        #expect(status.st_mode & S_IFMT == S_IFSOCK && status.st_mode & 0o777 == 0o600)
        server.shutdown()
        #expect(access(path, F_OK) != 0)
    }

    @Test("keep-alive serves pipelined requests on one connection")
    func keepAlive() throws {
        let path = Self.socketPath("keepalive")
        let server = try Self.makeServer(path)
        defer { server.shutdown() }
        let reply = try Self.exchange(path, "GET / HTTP/1.1\r\n\r\nGET /machine-config HTTP/1.1\r\n\r\nGET /vm/config HTTP/1.1\r\n\r\n", expectedResponses: 3)
        #expect(reply.components(separatedBy: "HTTP/1.1 200 OK").count - 1 == 3, "\(reply)")
        #expect(!reply.contains("Connection: close"))
    }

    @Test("many pipelined requests are all answered, even past the unsent-output limit")
    func pipelinedPastHighWater() throws {
        let path = Self.socketPath("highwater")
        let controller = try InstanceController(instanceID: "srv", vmmVersion: "0.1.0", configuration: InstanceConfiguration())
        let server = try APIServer(path: path, controller: controller, outputHighWater: 300)
        defer { server.shutdown() }
        let reply = try Self.exchange(path, String(repeating: "GET / HTTP/1.1\r\n\r\n", count: 40), expectedResponses: 40)
        #expect(reply.components(separatedBy: "HTTP/1.1 200 OK").count - 1 == 40)
    }

    @Test("a malformed request is answered with 400 and the connection closed")
    func malformedCloses() throws {
        let path = Self.socketPath("malformed")
        let server = try Self.makeServer(path)
        defer { server.shutdown() }
        let reply = try Self.exchange(path, "NONSENSE\r\n\r\nGET / HTTP/1.1\r\n\r\n", expectedResponses: 1)
        #expect(reply.hasPrefix("HTTP/1.1 400 Bad Request"), "\(reply)")
        #expect(reply.contains("Connection: close") && reply.contains("fault_message"))
        #expect(!reply.contains("200 OK"), "nothing after a malformed request is served")
    }

    @Test("oversized heads and bodies get 431 and 413")
    func oversized() throws {
        let path = Self.socketPath("oversized")
        let server = try Self.makeServer(path)
        defer { server.shutdown() }
        let head = try Self.exchange(path, "GET / HTTP/1.1\r\nX: " + String(repeating: "x", count: 2000) + "\r\n\r\n", expectedResponses: 1)
        #expect(head.hasPrefix("HTTP/1.1 431"), "\(head)")
        let body = try Self.exchange(path, "PUT /boot-source HTTP/1.1\r\nContent-Length: 300\r\n\r\n", expectedResponses: 1)
        #expect(body.hasPrefix("HTTP/1.1 413"), "\(body)")
    }

    @Test("Expect: 100-continue gets an interim response before the body")
    func continueInterim() throws {
        let path = Self.socketPath("continue")
        let server = try Self.makeServer(path)
        defer { server.shutdown() }
        let reply = try Self.exchange(path, "PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 400\r\n\r\n", expectedResponses: 1)
        #expect(reply.hasPrefix("HTTP/1.1 413"), "too large: refused before the body; \(reply)")
        let small = try Self.exchange(path, "PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n", expectedResponses: 1)
        #expect(small.hasPrefix("HTTP/1.1 100 Continue"), "\(small)")
    }

    /// A connected client socket that sends nothing (closed when the result is released).
    static func connectSilently(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(connected == 0)
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    @Test("more silent clients than connection slots do not lock out a real request")
    func silentClientsDoNotLockOut() throws {
        let path = Self.socketPath("silent")
        let server = try Self.makeServer(path)  // the default (long) idle timeout: eviction lets the request in
        defer { server.shutdown() }
        let silent = try (0..<(APIServer.maximumConnections + 6)).map { _ in try Self.connectSilently(path) }
        defer { silent.forEach { close($0) } }
        let reply = try Self.exchange(path, "GET / HTTP/1.1\r\n\r\n", expectedResponses: 1)
        #expect(reply.hasPrefix("HTTP/1.1 200 OK"), "management was locked out: '\(reply)'")
    }

    @Test("a client silent, or stuck in a partial request, past the idle timeout is disconnected; an active one is not")
    func idleTimeout() throws {
        let path = Self.socketPath("idle")
        let controller = try InstanceController(instanceID: "srv", vmmVersion: "0.1.0", configuration: InstanceConfiguration())
        let server = try APIServer(path: path, controller: controller, idleTimeout: .milliseconds(300))
        defer { server.shutdown() }
        let silent = try Self.connectSilently(path), partial = try Self.connectSilently(path)
        defer { close(silent); close(partial) }
        let head = Array("PUT /boot-source HTTP/1.1\r\nContent-Length: 100\r\n\r\n{".utf8)
        _ = head.withUnsafeBytes { send(partial, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        // recv waits (at most SO_RCVTIMEO, 10 s) for the server to close: 0 is end of file, -1 a timeout.
        var byte: UInt8 = 0
        #expect(recv(silent, &byte, 1, 0) == 0, "a silent client was kept")
        #expect(recv(partial, &byte, 1, 0) == 0, "a client with a partial request was kept")
        // The server itself carries on.
        let reply = try Self.exchange(path, "GET / HTTP/1.1\r\n\r\n", expectedResponses: 1)
        #expect(reply.hasPrefix("HTTP/1.1 200 OK"))
    }

    @Test("a stale socket file is replaced; a live one and a regular file are refused")
    func staleAndLive() throws {
        let path = Self.socketPath("stale")
        // A socket file nobody listens on.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(fd)
        #expect(access(path, F_OK) == 0)
        let server = try Self.makeServer(path)
        #expect(throws: APIServerError.self) { _ = try Self.makeServer(path) }
        server.shutdown()

        let regular = Self.socketPath("regular")
        FileManager.default.createFile(atPath: regular, contents: Data("keep me".utf8))
        defer { try? FileManager.default.removeItem(atPath: regular) }
        #expect(throws: APIServerError.self) { _ = try Self.makeServer(regular) }
        #expect((try? String(contentsOfFile: regular, encoding: .utf8)) == "keep me")
    }
}
