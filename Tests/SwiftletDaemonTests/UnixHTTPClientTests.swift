import Foundation
import SwiftletClient
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A Unix socket that answers one connection with canned bytes (a hostile
/// or broken VMM control socket), then closes it.
final class CannedHTTPServer: @unchecked Sendable {
    let path: String
    let listener: Int32
    let thread: Thread

    init(answer: [UInt8]) throws {
        path = NSTemporaryDirectory() + "canned-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        // SAFETY: the path is far shorter than sun_path's 108 bytes.
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
            raw[bytes.count] = 0
        }
        let bound = withUnsafePointer(to: &address) { pointer in
            // SAFETY: sockaddr_un is layout-compatible with sockaddr for bind(2).
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(listener, 8) == 0 else { throw TestEnvironment.Failure(description: "cannot listen on \(path)") }
        // One connection only: a thread that went on accepting could take a
        // later server's connection once this descriptor number is reused.
        thread = Thread {
            do {
                let client = accept(listener, nil, nil)
                if client < 0 { return }
                // Read the request head, then answer.
                var scratch = [UInt8](repeating: 0, count: 4096)
                _ = recv(client, &scratch, scratch.count, 0)
                _ = answer.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(client)
            }
        }
        thread.start()
    }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        unlink(path)
    }
}

@Suite("the Unix-socket HTTP client against hostile responses")
struct UnixHTTPClientTests {
    static func ask(_ answer: String) throws -> UnixHTTPClient.Response {
        let server = try CannedHTTPServer(answer: Array(answer.utf8))
        defer { server.stop() }
        return try UnixHTTPClient(socketPath: server.path, timeout: 5, maximumBodySize: 1 << 20).request("GET", "/")
    }

    @Test("a negative, signed or non-numeric Content-Length is a malformed response, not a trap", arguments: [
        "-5", "+5", "0x10", "5 5", "99999999999999999999999",
    ])
    func badContentLength(value: String) {
        #expect(throws: UnixHTTPClient.Failure.self) { try Self.ask("HTTP/1.1 200 OK\r\nContent-Length: \(value)\r\n\r\nabc") }
    }

    @Test("a negative or huge chunk size is a malformed response, not a trap", arguments: [
        "-5", "7fffffffffffffff", "ffffffffffffffffff", "+3", "",
    ])
    func badChunkSize(value: String) {
        #expect(throws: UnixHTTPClient.Failure.self) {
            try Self.ask("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\(value)\r\nabc")
        }
    }

    @Test("a body larger than the client's cap is refused, whether announced, chunked or read until close")
    func bodyCap() {
        let big = String(repeating: "x", count: (1 << 20) + 1)
        #expect(throws: UnixHTTPClient.Failure.self) { try Self.ask("HTTP/1.1 200 OK\r\nContent-Length: 4000000000\r\n\r\nabc") }
        #expect(throws: UnixHTTPClient.Failure.self) { try Self.ask("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + big) }
        let chunks = String(repeating: "100000\r\n" + String(repeating: "y", count: 1 << 20) + "\r\n", count: 2)
        #expect(throws: UnixHTTPClient.Failure.self) { try Self.ask("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks) }
    }

    @Test("well-formed responses still parse: Content-Length, chunked, and read until close")
    func wellFormed() throws {
        var response = try Self.ask("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        #expect(response.status == 200 && response.text == "hello")
        response = try Self.ask("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        #expect(response.status == 201 && response.text == "hello world")
        response = try Self.ask("HTTP/1.1 400 Bad Request\r\n\r\n{\"fault_message\":\"no\"}")
        #expect(response.status == 400 && response.text.contains("fault_message"))
    }

    @Test("bytes in memory, split anywhere, parse the same as from a socket")
    func pieces() throws {
        let bytes = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".utf8)
        for size in 1...8 {
            let pieces = stride(from: 0, to: bytes.count, by: size).map { Array(bytes[$0..<min($0 + size, bytes.count)]) }
            let response = try UnixHTTPClient.parseResponse(pieces, maximumBodySize: 16)
            #expect(response.text == "abc")
        }
        #expect(throws: UnixHTTPClient.Failure.self) { try UnixHTTPClient.parseResponse([bytes], maximumBodySize: 2) }
    }
}
