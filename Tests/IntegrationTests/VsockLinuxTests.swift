import Foundation
import Glibc
import Testing

/// The default Linux guest's vsock driver against the hybrid device, through
/// the guest's /bin/swiftlet-vsock: one boot, several checks.
@Suite("virtio-vsock in the default Linux guest", .serialized,
       .enabled(if: KitGuest.shouldRun && (LinuxGuest.isBuilt || KitGuest.isCI), LinuxGuest.skipReason))
struct VsockLinuxTests {
    /// The tool's pattern: byte i is (i * 7 + 3) & 0xff.
    static func toolPattern(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) } }

    static func sumLine(_ bytes: [UInt8]) -> String { "SUM \(String(format: "%08x", HostVsock.fnv1a(bytes))) \(bytes.count)" }

    @Test("host->guest and guest->host streams with checksums, three at once, a slow host reader that stalls no other stream, RST both ways",
          .timeLimit(.minutes(10)))
    func streams() throws {
        let directory = try HostVsock.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let uds = directory + "/v.sock"
        let fastSize = 1 << 20, slowSize = 2 << 20, inboundSize = 512 << 10

        // Guest to host: a fast stream (port 6000) and a slow one (6001)
        // whose reader waits until the fast one is complete.
        let fastListener = try HostVsock.listen(uds + "_6000")
        let slowListener = try HostVsock.listen(uds + "_6001")
        defer { close(fastListener); close(slowListener) }
        let fastDone = Reported<(bytes: [UInt8], slowHeld: Bool)?>(nil)
        let slowReceived = Reported<[UInt8]>([])
        let slowAccepted = Reported(false)
        let slowThread = Thread {
            guard HostVsock.readable(slowListener, milliseconds: 300_000) else { return }
            let client = accept(slowListener, nil, nil)
            guard client >= 0 else { return }
            defer { close(client) }
            slowAccepted.value = true
            // Hold the stream: read nothing until the fast one has finished.
            while fastDone.value == nil { usleep(20_000) }
            let bytes = HostVsock.readAll(client, seconds: 120)
            slowReceived.value = bytes
            _ = HostVsock.sendAll(client, Array((Self.sumLine(bytes) + "\n").utf8))
        }
        let fastThread = Thread {
            guard HostVsock.readable(fastListener, milliseconds: 300_000) else { return }
            let client = accept(fastListener, nil, nil)
            guard client >= 0 else { return }
            defer { close(client) }
            let bytes = HostVsock.readAll(client, seconds: 120)
            fastDone.value = (bytes, slowAccepted.value && slowReceived.value.isEmpty)
            _ = HostVsock.sendAll(client, Array((Self.sumLine(bytes) + "\n").utf8))
        }
        slowThread.start()
        fastThread.start()

        let script = """
            swiftlet-vsock listen 5000 sum 3 &
            sleep 1
            echo GUEST-LISTENING
            swiftlet-vsock connect 2 6001 send \(slowSize) > /tmp/slow &
            sleep 2
            swiftlet-vsock connect 2 6000 send \(fastSize) > /tmp/fast
            echo "FAST=$(cat /tmp/fast)"
            swiftlet-vsock connect 2 6999 recv 2>/tmp/refused; echo "REFUSED=$? $(cat /tmp/refused)"
            wait
            echo "SLOW=$(cat /tmp/slow)"
            echo GUEST-DONE
            """
        let vm = try HostCommand(ProcessTests.binary("swiftlet"), [
            "run", "--memory", "256M", "--vsock", "cid=3,uds=\(uds)", "--", "sh", "-c", script,
        ])
        defer { vm.stop() }
        #expect(vm.waitForOutput("GUEST-LISTENING", seconds: 240), "console: \(vm.output.suffix(3000)) \(vm.errors)")
        #expect(FileManager.default.fileExists(atPath: uds))

        // Host to guest: three streams at once into the guest's listener,
        // each answered with its checksum; then a port nobody listens on.
        let inbound = (0..<3).map { index in (0..<inboundSize).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ index) } }
        let answers = Reported<[Int: String]>([:])
        let senders = inbound.enumerated().map { index, data in
            Thread {
                guard let (client, _) = HostVsock.connectToGuest(uds: uds, port: 5000, seconds: 120) else { return }
                defer { close(client) }
                _ = HostVsock.sendAll(client, data)
                shutdown(client, Int32(SHUT_WR))
                let reply = String(decoding: HostVsock.readAll(client, seconds: 120), as: UTF8.self)
                var current = answers.value
                current[index] = reply
                answers.value = current
            }
        }
        senders.forEach { $0.start() }
        // CONNECT to a port nobody listens on: the guest answers RST, the host sees end of file.
        var refusedLine: String?
        if let client = HostVsock.connect(uds) {
            _ = HostVsock.sendAll(client, Array("CONNECT 5999\n".utf8))
            refusedLine = HostVsock.readLine(client, seconds: 60)
            close(client)
        }
        #expect(refusedLine == nil, "no OK for a port the guest does not listen on: \(String(describing: refusedLine))")

        #expect(vm.waitForOutput("GUEST-DONE", seconds: 300), "console: \(vm.output.suffix(3000)) \(vm.errors)")
        #expect(vm.waitForExit(seconds: 60) == 0, "stderr: \(vm.errors)")
        while senders.contains(where: \.isExecuting) || slowThread.isExecuting || fastThread.isExecuting { usleep(20_000) }

        let output = vm.output
        for (index, data) in inbound.enumerated() {
            #expect(answers.value[index] == Self.sumLine(data) + "\n", "stream \(index): \(String(describing: answers.value[index]))")
        }
        let fast = fastDone.value
        #expect(fast?.bytes == Self.toolPattern(fastSize))
        #expect(slowAccepted.value)
        #expect(fast?.slowHeld == true, "the slow stream was open and held while the fast one completed")
        #expect(slowReceived.value == Self.toolPattern(slowSize))
        #expect(output.contains("FAST=" + Self.sumLine(Self.toolPattern(fastSize))), "\(output.suffix(2000))")
        #expect(output.contains("SLOW=" + Self.sumLine(Self.toolPattern(slowSize))), "\(output.suffix(2000))")
        #expect(output.contains("REFUSED=1 swiftlet-vsock: connect 2:6999: Connection reset by peer"), "\(output.suffix(2000))")
        #expect(!FileManager.default.fileExists(atPath: uds), "the socket is removed when the VMM exits")
    }
}
