import Foundation
import HostSystem
import QMP
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The server side of one QMP connection in a test: raw lines out, requests in.
struct FakeQMPConnection: Sendable {
    let socket: UnixStreamSocket

    /// Sends `text` and CRLF (MSG_NOSIGNAL: the client may already be gone).
    func send(_ text: String) {
        let bytes = Array((text + "\r\n").utf8)
        var offset = 0
        while offset < bytes.count {
            // SAFETY: send reads the rest of the array's bytes during the call.
            let sent = bytes.withUnsafeBytes { raw in
                Glibc.send(socket.descriptor.rawValue, raw.baseAddress.map { $0 + offset }, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if sent <= 0 { return }
            offset += sent
        }
    }

    func sendRaw(_ bytes: [UInt8]) {
        // SAFETY: send reads the array's bytes during the call.
        _ = bytes.withUnsafeBytes { raw in Glibc.send(socket.descriptor.rawValue, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL)) }
    }

    /// The next request line as a JSON object; nil on end of file or after 10 s.
    func readRequest() -> [String: Any]? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            var descriptor = pollfd(fd: socket.descriptor.rawValue, events: Int16(POLLIN), revents: 0)
            // SAFETY: poll uses the one pollfd and read writes the one byte, both only during the calls.
            guard poll(&descriptor, 1, 10_000) == 1, read(socket.descriptor.rawValue, &byte, 1) == 1 else { return nil }
            if byte == UInt8(ascii: "\n") { break }
            line.append(byte)
        }
        return (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any]
    }

    /// The id of the next request, which must execute `command`.
    func expect(_ command: String) -> Int? {
        guard let request = readRequest() else { return nil }
        #expect(request["execute"] as? String == command, "the client sent the command the test runs")
        return (request["id"] as? NSNumber)?.intValue
    }

    /// Blocks until the client closes (or 10 s pass).
    func waitForClose() {
        while readRequest() != nil {}
    }

    static let greeting = #"{"QMP": {"version": {"qemu": {"micro": 19, "minor": 2, "major": 7}, "package": "test"}, "capabilities": ["oob"]}}"#

    /// The greeting and the answer to qmp_capabilities.
    func handshake() {
        send(Self.greeting)
        guard let id = expect("qmp_capabilities") else { return }
        send(#"{"return": {}, "id": \#(id)}"#)
    }
}

/// A QMP server on a Unix socket in a temporary folder, running `script` for
/// one connection on its own thread.
final class FakeQMPServer: Sendable {
    let folder: String
    let path: String
    private let thread: HostThread

    init(_ script: @escaping @Sendable (FakeQMPConnection) -> Void) throws {
        folder = NSTemporaryDirectory() + "swiftlet-qmp-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        path = folder + "/qmp.sock"
        let listener = try UnixStreamSocket.listen(path: path)
        thread = try HostThread(name: "fake-qmp") {
            guard let socket = try? listener.accept() else { return }
            script(FakeQMPConnection(socket: socket))
        }
    }

    /// Waits for the script to end and removes the folder.
    func finish() {
        thread.join()
        try? FileManager.default.removeItem(atPath: folder)
    }
}
