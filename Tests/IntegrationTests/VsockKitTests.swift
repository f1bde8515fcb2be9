import Foundation
import Glibc
import Testing
@testable import VMM

/// Host-side helpers for the hybrid vsock: plain blocking Unix sockets, as a
/// host program would use them.
enum HostVsock {
    /// A fresh folder for the device's socket and the `<uds>_<port>` listeners.
    static func temporaryDirectory() throws -> String {
        var template = Array("/tmp/swiftlet-vsock-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw KitGuest.KitError(message: "mkdtemp failed") }
        return String(cString: made)
    }

    static func address(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: Array(path.utf8.prefix(107))) }
        return address
    }

    static func listen(_ path: String) throws -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = address(path)
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, Glibc.listen(descriptor, 64) == 0 else { throw KitGuest.KitError(message: "cannot listen on \(path)") }
        return descriptor
    }

    static func connect(_ path: String) -> Int32? {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = address(path)
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if connected != 0 {
            close(descriptor)
            return nil
        }
        return descriptor
    }

    /// Waits up to `milliseconds` for `descriptor` to be readable.
    static func readable(_ descriptor: Int32, milliseconds: Int32) -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, milliseconds) == 1
    }

    static func sendAll(_ descriptor: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { return false }
            offset += sent
        }
        return true
    }

    /// Reads until end of file, `limit` bytes, or `seconds` without data.
    static func readAll(_ descriptor: Int32, limit: Int = 64 << 20, seconds: Int32 = 60) -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while result.count < limit, readable(descriptor, milliseconds: seconds * 1000) {
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            result += buffer[..<count]
        }
        return result
    }

    /// Reads one line (up to 64 bytes), byte by byte so nothing after it is consumed.
    static func readLine(_ descriptor: Int32, seconds: Int32 = 30) -> String? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 64, readable(descriptor, milliseconds: seconds * 1000), recv(descriptor, &byte, 1, 0) == 1 {
            line.append(byte)
            if byte == 0x0A { return String(decoding: line, as: UTF8.self) }
        }
        return nil
    }

    /// Connects to the device's socket and asks for guest port `port`,
    /// retrying (the guest may not listen yet) until `seconds` pass.
    /// Returns the connected socket and the OK line.
    static func connectToGuest(uds: String, port: UInt32, seconds: Double = 60) -> (Int32, String)? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let client = connect(uds) {
                if sendAll(client, Array("CONNECT \(port)\n".utf8)), let line = readLine(client), line.hasPrefix("OK ") {
                    return (client, line)
                }
                close(client)
            }
            usleep(100_000)
        }
        return nil
    }

    /// Accepts one connection on `listener` and echoes it until end of file;
    /// returns the bytes echoed.
    static func echoOnce(_ listener: Int32, seconds: Int32 = 60) -> Int {
        guard readable(listener, milliseconds: seconds * 1000) else { return -1 }
        let client = accept(listener, nil, nil)
        guard client >= 0 else { return -1 }
        defer { close(client) }
        var total = 0
        var buffer = [UInt8](repeating: 0, count: 65536)
        while readable(client, milliseconds: seconds * 1000) {
            let count = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            guard count > 0, sendAll(client, Array(buffer[..<count])) else { break }
            total += count
        }
        return total
    }

    static func fnv1a(_ bytes: [UInt8]) -> UInt32 {
        bytes.reduce(UInt32(2_166_136_261)) { ($0 ^ UInt32($1)) &* 16_777_619 }
    }

    /// The kit's echo pattern.
    static func echoPattern(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ ($0 >> 8)) } }
}

/// A mutable box the host threads report into.
final class Reported<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}

@Suite("virtio-vsock with the guest kit", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct VsockKitTests {
    @Test("guest to host echo (256 KiB, credit both ways), RST from an unknown port, and a host-initiated stream with checksums",
          .timeLimit(.minutes(2)), arguments: VirtioTransportKind.allCases)
    func kitExchange(transport: VirtioTransportKind) throws {
        let directory = try HostVsock.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let uds = directory + "/v.sock"
        let echoListener = try HostVsock.listen(uds + "_1234")
        defer { close(echoListener) }

        let echoed = Reported(0)
        let echoThread = Thread { echoed.value = HostVsock.echoOnce(echoListener) }
        echoThread.start()
        let upload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let hostResult = Reported<(ok: String, reply: String)?>(nil)
        let initiator = Thread {
            guard let (client, ok) = HostVsock.connectToGuest(uds: uds, port: 5000) else { return }
            defer { close(client) }
            _ = HostVsock.sendAll(client, upload)
            shutdown(client, Int32(SHUT_WR))
            hostResult.value = (ok, String(decoding: HostVsock.readAll(client, seconds: 30), as: UTF8.self))
        }
        initiator.start()

        var configuration = VMConfiguration(kernelPath: try KitGuest.program("virtio-vsock"), commandLine: "bytes=262144",
                                            serial: .none)
        configuration.vsock = VsockConfiguration(guestCID: 42, udsPath: uds)
        configuration.transport = transport
        let output = CapturingSerialOutput()
        let reason: VMExitReason
        do {
            let machine = try VirtualMachine(configuration: configuration, serialOutput: output)
            #expect(FileManager.default.fileExists(atPath: uds), "the socket exists before the guest runs")
            reason = try machine.run()
        }
        let text = output.text
        #expect(reason == .poweredOff, "\(text)")
        #expect(text.contains("KIT virtio-vsock guest_cid=42"), "\(text)")
        let echoLine = text.split(whereSeparator: \.isNewline).first { $0.hasPrefix("KIT virtio-vsock echo ") } ?? ""
        #expect(echoLine.contains("bytes=262144 sum=\(String(format: "%08x", HostVsock.fnv1a(HostVsock.echoPattern(262144))))"), "\(text)")
        #expect(echoLine.contains("closed=rst"))
        // Our 16 KiB buf_alloc against 256 KiB: the kit must have sent credit updates.
        #expect(!echoLine.contains("updates_sent=0 "), "\(echoLine)")
        #expect(text.contains("KIT virtio-vsock refused=rst"), "\(text)")
        let expected = String(format: "%08x", HostVsock.fnv1a(upload))
        #expect(text.contains("KIT virtio-vsock accepted bytes=100000 sum=\(expected) closed=rst"), "\(text)")
        #expect(text.contains("KIT virtio-vsock PASS"))
        while echoThread.isExecuting || initiator.isExecuting { usleep(10_000) }
        #expect(echoed.value == 262_144)
        #expect(hostResult.value?.ok.hasPrefix("OK 1073741") == true, "\(String(describing: hostResult.value))")
        #expect(hostResult.value?.reply == "SUM \(expected) 100000\n")
        #expect(!FileManager.default.fileExists(atPath: uds), "the socket is removed with the VM")
    }

    @Test("a vsock path that exists is refused before the guest starts; an invalid CID is refused")
    func existingPath() throws {
        let directory = try HostVsock.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let uds = directory + "/v.sock"
        _ = FileManager.default.createFile(atPath: uds, contents: Data())
        var configuration = VMConfiguration(kernelPath: try KitGuest.program("virtio-vsock"), serial: .none)
        configuration.vsock = VsockConfiguration(guestCID: 3, udsPath: uds)
        #expect {
            _ = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
        } throws: { error in
            "\(error)".contains("already exists")
        }
        #expect(FileManager.default.fileExists(atPath: uds), "someone else's file is left alone")
        configuration.vsock = VsockConfiguration(guestCID: 2, udsPath: directory + "/other")
        #expect {
            _ = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
        } throws: { error in
            "\(error)".contains("invalid vsock cid '2'")
        }
    }

    @Test("--on-reboot restart rebuilds the VM with the same socket path; SIGTERM ends the VMM and removes the socket")
    func rebootKeepsSocket() throws {
        let directory = try HostVsock.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let uds = directory + "/v.sock"
        let log = directory + "/serial"
        let (process, _, errors) = try ProcessTests.start("swiftlet-vmm", [
            "--kernel", try KitGuest.program("reboot"), "--on-reboot", "restart", "--serial", "file:\(log)",
            "--vsock", "cid=3,uds=\(uds)",
        ])
        var boots = 0
        for _ in 0..<300 where boots < 3 {
            usleep(50_000)
            boots = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").components(separatedBy: "KIT reboot requested").count - 1
        }
        #expect(boots >= 3, "each rebuilt VM binds the socket again")
        process.terminate()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 4, "\(stderr)")
        #expect(!FileManager.default.fileExists(atPath: uds), "removed when the VMM exits")
    }
}
