import Foundation
import Glibc
import Synchronization
import Testing

/// A minimal HTTP/1.1 client over a Unix socket (one request per connection).
enum UnixHTTP {
    struct Response {
        let status: Int
        let head: String
        let body: String
    }

    struct Failure: Error, CustomStringConvertible { let description: String }

    static func request(_ socketPath: String, _ method: String, _ path: String, body: String? = nil) throws -> Response {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw Failure(description: "connect \(socketPath): errno \(errno)") }
        var text = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if let body { text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n" }
        text += "\r\n" + (body ?? "")
        let out = Array(text.utf8)
        var sent = 0
        while sent < out.count {
            let count = out[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw Failure(description: "send: errno \(errno)") }
            sent += count
        }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            received += buffer[..<count]
        }
        let reply = String(decoding: received, as: UTF8.self)
        guard let split = reply.range(of: "\r\n\r\n") else { throw Failure(description: "no response head in '\(reply)'") }
        let head = String(reply[..<split.lowerBound])
        let statusText = head.split(separator: " ").dropFirst().first.map(String.init) ?? ""
        return Response(status: Int(statusText) ?? 0, head: head, body: String(reply[split.upperBound...]))
    }

    /// Waits (bounded) until the socket accepts connections.
    static func waitForSocket(_ path: String, seconds: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if (try? request(path, "GET", "/")) != nil { return true }
            usleep(20_000)
        }
        return false
    }
}

/// Starts swiftlet-vmm with the control API and talks to it over the socket.
@Suite("Control API (swiftlet-vmm processes)", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct ControlAPIProcessTests {
    final class VMMProcess {
        let process: Process
        let errors: Pipe
        let socket: String
        let serialLog: String
        let apiLog: String

        init(_ arguments: [String], name: String) throws {
            let directory = FileManager.default.temporaryDirectory.path
            socket = "\(directory)/swiftlet-api-\(getpid())-\(name).sock"
            serialLog = "\(directory)/swiftlet-api-\(getpid())-\(name).serial"
            apiLog = "\(directory)/swiftlet-api-\(getpid())-\(name).log"
            for path in [socket, serialLog, apiLog] { try? FileManager.default.removeItem(atPath: path) }
            let (process, _, errors) = try ProcessTests.start("swiftlet-vmm", arguments + [
                "--api-sock", socket, "--serial", "file:\(serialLog)", "--log-path", apiLog,
            ])
            self.process = process
            self.errors = errors
            guard UnixHTTP.waitForSocket(socket) else {
                process.terminate()
                throw UnixHTTP.Failure(description: "the API socket never answered; stderr: \(stderrText())")
            }
        }

        func request(_ method: String, _ path: String, _ body: String? = nil) throws -> UnixHTTP.Response {
            try UnixHTTP.request(socket, method, path, body: body)
        }

        var serial: String { (try? String(contentsOfFile: serialLog, encoding: .utf8)) ?? "" }

        func ticks() -> Int { serial.components(separatedBy: "KIT idle tick").count - 1 }

        /// Waits (bounded) until the serial log satisfies `condition`.
        func waitForSerial(seconds: Double = 20, _ condition: (String) -> Bool) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if condition(serial) { return true }
                usleep(20_000)
            }
            return false
        }

        /// Waits (bounded) for the process to exit; returns its status or nil.
        func waitForExit(seconds: Double = 20) -> Int32? {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning {
                process.terminate()
                process.waitUntilExit()
                return nil
            }
            return process.terminationStatus
        }

        func stderrText() -> String {
            if process.isRunning { return "(running)" }
            return String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        }

        deinit {
            if process.isRunning { process.terminate(); process.waitUntilExit() }
            for path in [socket, serialLog, apiLog] { try? FileManager.default.removeItem(atPath: path) }
        }
    }

    static func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    @Test("Firecracker flow: --api-sock alone waits; boot-source, machine-config and InstanceStart boot the guest")
    func preBootFlow() throws {
        let vm = try VMMProcess(["--id", "flow-test"], name: "flow")
        let info = Self.json(try vm.request("GET", "/").body)
        #expect(info["id"] as? String == "flow-test")
        #expect(info["state"] as? String == "Not started")
        #expect(info["app_name"] as? String == "swiftlet")

        let early = try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(early.status == 400 && early.body.contains("boot-source"), "\(early.body)")

        let kernel = try KitGuest.program("idle")
        #expect(try vm.request("PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)", "boot_args": "period_ms=20"}"#).status == 204)
        #expect(try vm.request("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 64, "smt": false}"#).status == 204)
        let machine = Self.json(try vm.request("GET", "/machine-config").body)
        #expect(machine["vcpu_count"] as? Int == 2 && machine["mem_size_mib"] as? Int == 64)

        #expect(try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(Self.json(try vm.request("GET", "/").body)["state"] as? String == "Running")
        #expect(vm.waitForSerial { $0.contains("KIT idle tick 3") }, "serial: \(vm.serial.suffix(500))")

        let late = try vm.request("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#)
        #expect(late.status == 400 && late.body.contains("not supported after starting the microVM"), "\(late.body)")
        let again = try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(again.status == 400 && again.body.contains("not supported after starting the microVM"))
        let config = Self.json(try vm.request("GET", "/vm/config").body)
        #expect((config["machine-config"] as? [String: Any])?["vcpu_count"] as? Int == 2)
        #expect((config["boot-source"] as? [String: Any])?["kernel_image_path"] as? String == kernel)

        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0, "stderr: \(vm.stderrText())")
        #expect(!FileManager.default.fileExists(atPath: vm.socket), "the socket file is removed at exit")
    }

    @Test("PATCH /vm Paused stops guest progress and exits; Resumed continues; metrics count exits")
    func pauseResume() throws {
        // Two vCPUs: the second waits for INIT/SIPI inside KVM_RUN and must park too.
        let vm = try VMMProcess(["--kernel", try KitGuest.program("idle"), "--cmdline", "period_ms=10", "--cpus", "2", "--rng"], name: "pause")
        #expect(vm.waitForSerial { $0.contains("KIT idle tick 5") })

        #expect(try vm.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        #expect(Self.json(try vm.request("GET", "/").body)["state"] as? String == "Paused")
        let pausedTicks = vm.ticks()
        let pausedExits = (Self.json(try vm.request("GET", "/metrics").body)["exits"] as? [String: Any])?["total"] as? Int
        usleep(400_000)
        #expect(vm.ticks() == pausedTicks, "no progress while paused")
        let laterExits = (Self.json(try vm.request("GET", "/metrics").body)["exits"] as? [String: Any])?["total"] as? Int
        #expect(pausedExits != nil && pausedExits == laterExits, "no exits while paused: \(String(describing: pausedExits)) vs \(String(describing: laterExits))")

        #expect(try vm.request("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
        #expect(vm.waitForSerial { _ in vm.ticks() >= pausedTicks + 5 }, "progress after resume")
        #expect(Self.json(try vm.request("GET", "/").body)["state"] as? String == "Running")

        let metrics = Self.json(try vm.request("GET", "/metrics").body)
        let exits = metrics["exits"] as? [String: Any] ?? [:]
        #expect((exits["io_out"] as? Int ?? 0) > 0 && (exits["io_in"] as? Int ?? 0) > 0, "\(metrics)")
        #expect((metrics["uptime_ms"] as? Int ?? 0) > 0)
        #expect((metrics["paused_ms"] as? Int ?? 0) >= 300, "\(metrics)")
        #expect((metrics["vcpus"] as? [Any])?.count == 2)
        let devices = metrics["devices"] as? [[String: Any]] ?? []
        #expect(devices.count == 1 && (devices.first?["name"] as? String)?.hasPrefix("virtio-rng") == true, "\(devices)")
        #expect(devices.first?["requests"] as? Int != nil)
        #expect(((metrics["serial"] as? [String: Any])?["bytes_out"] as? Int ?? 0) > 0)

        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0)
    }

    @Test("malformed, unknown, mistyped, oversized and misrouted requests get a 4xx fault_message and change nothing")
    func badRequests() throws {
        let vm = try VMMProcess([], name: "bad")
        let before = try vm.request("GET", "/vm/config").body
        let cases: [(String, String, String?, Int, String)] = [
            ("PUT", "/machine-config", #"{"vcpu_count": 2"#, 400, "malformed JSON"),
            ("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 64, "cpus": 3}"#, 400, "unknown field `cpus`"),
            ("PUT", "/machine-config", #"{"vcpu_count": "two", "mem_size_mib": 64}"#, 400, "invalid type: a string for `vcpu_count`"),
            ("PUT", "/machine-config", #"{"vcpu_count": 0, "mem_size_mib": 64}"#, 400, "expected 1 to 254"),
            ("PUT", "/machine-config", #"{"mem_size_mib": 64}"#, 400, "missing field `vcpu_count`"),
            ("PUT", "/boot-source", #"["kernel"]"#, 400, "expected a JSON object"),
            ("PUT", "/boot-source", nil, 400, "Empty PUT request."),
            ("PUT", "/drives/root", #"{"drive_id": "other", "path_on_host": "/x", "is_root_device": true}"#, 400, "differs from the id"),
            ("PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}"#, 400, "not a MAC address"),
            ("PUT", "/actions", #"{"action_type": "Explode"}"#, 400, "unknown variant `Explode`"),
            ("PATCH", "/vm", #"{"state": "Paused"}"#, 400, "not supported before starting the microVM"),
            ("DELETE", "/machine-config", nil, 405, "Invalid request method and/or path: DELETE /machine-config."),
            ("GET", "/no/such/thing", nil, 400, "Invalid request method and/or path"),
            ("PUT", "/boot-source", String(repeating: " ", count: 70_000), 413, "exceeds the limit"),
        ]
        for (method, path, body, status, message) in cases {
            let response = try vm.request(method, path, body)
            #expect(response.status == status, "\(method) \(path): \(response.status) \(response.body)")
            #expect(Self.json(response.body)["fault_message"].map { "\($0)".contains(message) } == true, "\(method) \(path): \(response.body)")
        }
        #expect(try vm.request("GET", "/vm/config").body == before, "nothing changed")
        #expect(Self.json(try vm.request("GET", "/").body)["state"] as? String == "Not started")
        vm.process.terminate()
        #expect(vm.waitForExit() == 4)
    }

    @Test("Shutdown presses the power button and, with timeout_ms, stops a guest that ignores it")
    func shutdownTimeout() throws {
        let vm = try VMMProcess(["--kernel", try KitGuest.program("idle")], name: "shutdown")
        #expect(vm.waitForSerial { $0.contains("KIT idle tick 1") })
        let started = Date()
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Shutdown", "timeout_ms": 500}"#).status == 204)
        #expect(vm.waitForExit() == 0)
        #expect(Date().timeIntervalSince(started) >= 0.45, "the VMM waits for the timeout")
        let log = (try? String(contentsOfFile: vm.apiLog, encoding: .utf8)) ?? ""
        #expect(log.contains("did not power off before the shutdown timeout"), "log: \(log)")
    }

    @Test("Reboot boots the guest again in the same process, with the API still up")
    func reboot() throws {
        let vm = try VMMProcess(["--kernel", try KitGuest.program("idle")], name: "reboot")
        #expect(vm.waitForSerial { $0.contains("KIT idle tick 1") })
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Reboot"}"#).status == 204)
        #expect(vm.waitForSerial { $0.components(separatedBy: "KIT idle start").count - 1 >= 2 }, "serial: \(vm.serial.suffix(300))")
        #expect(Self.json(try vm.request("GET", "/metrics").body)["boots"] as? Int == 2)
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0)
    }

    @Test("--config-file in Firecracker's layout boots at once; a second VMM refuses the live socket")
    func configFile() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-fc-\(getpid()).json")
        let json = #"{"boot-source": {"kernel_image_path": "\#(try KitGuest.program("idle"))", "boot_args": "period_ms=20"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#
        try Data(json.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let vm = try VMMProcess(["--config-file", file.path], name: "file")
        #expect(vm.waitForSerial { $0.contains("KIT idle tick 1") })
        #expect(Self.json(try vm.request("GET", "/machine-config").body)["mem_size_mib"] as? Int == 64)
        var status = stat()
        #expect(lstat(vm.socket, &status) == 0 && status.st_mode & 0o777 == 0o600, "socket mode 0600")

        let second = try ProcessTests.run("swiftlet-vmm", ["--api-sock", vm.socket])
        #expect(second.status == 1 && second.stderr.contains("another process is listening"), "\(second.stderr)")

        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0)
    }

    /// Sends `request` pipelined, over and over, on one connection until `finish()`.
    final class RequestFlood: Sendable {
        let done = Mutex(false)

        init(socket path: String, request: String) {
            let payload = Array(String(repeating: request, count: 32).utf8)
            let thread = Thread { [self] in
                let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
                defer { close(fd) }
                var address = sockaddr_un()
                address.sun_family = sa_family_t(AF_UNIX)
                withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
                let connected = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
                guard connected == 0 else { return }
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                var sink = [UInt8](repeating: 0, count: 65536)
                while !done.withLock({ $0 }) {
                    _ = payload.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    let count = sink.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    if count == 0 { return }
                }
            }
            thread.start()
        }

        func finish() { done.withLock { $0 = true } }
    }

    @Test("a client flooding the API cannot starve another client, nor keep the VMM from exiting")
    func floodFairness() throws {
        let vm = try VMMProcess(["--on-reboot", "exit"], name: "flood")
        let body = #"{"action_type": "Reboot"}"#
        let flood = RequestFlood(socket: vm.socket, request: "PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        defer { flood.finish() }
        usleep(200_000)
        // Another client is answered while the flood goes on.
        let started = Date()
        let kernel = try KitGuest.program("idle")
        #expect(try vm.request("PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#).status == 204)
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(Date().timeIntervalSince(started) < 5, "answered in turn, not after the flood")
        // The flood reboots the VM again and again (the API asked for it); a signal still ends the process.
        usleep(300_000)
        vm.process.terminate()
        #expect(vm.waitForExit(seconds: 10) == 4, "the VMM exits on SIGTERM despite the flood")
    }

    @Test("a --config-file VM puts its devices on virtio-mmio as Firecracker does (--enable-pci on PCI); GET /metrics lists them either way",
          arguments: [false, true])
    func configFileTransport(enablePCI: Bool) throws {
        let directory = FileManager.default.temporaryDirectory
        let image = directory.appendingPathComponent("swiftlet-fc-mmio-\(getpid())-\(enablePCI).img")
        try Data(count: 1 << 20).write(to: image)
        defer { try? FileManager.default.removeItem(at: image) }
        let file = directory.appendingPathComponent("swiftlet-fc-mmio-\(getpid())-\(enablePCI).json")
        let json = #"{"boot-source": {"kernel_image_path": "\#(try KitGuest.program("idle"))", "boot_args": "period_ms=20"}, "#
            + #""machine-config": {"vcpu_count": 1, "mem_size_mib": 64}, "entropy": {}, "#
            + #""drives": [{"drive_id": "rootfs", "path_on_host": "\#(image.path)", "is_root_device": true, "is_read_only": false}]}"#
        try Data(json.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let vm = try VMMProcess(["--config-file", file.path] + (enablePCI ? ["--enable-pci"] : []), name: "transport-\(enablePCI)")
        #expect(vm.waitForSerial { $0.contains("KIT idle tick 1") }, "serial: \(vm.serial.suffix(500))")
        // The kit prints its command line: the devices are announced there over MMIO only.
        #expect(vm.serial.contains("virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7") != enablePCI, "serial: \(vm.serial.prefix(600))")
        let devices = (Self.json(try vm.request("GET", "/metrics").body)["devices"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        let expected = enablePCI ? ["virtio-rng 00:01.0", "virtio-blk 00:02.0"] : ["virtio-rng mmio@0xd0001000", "virtio-blk mmio@0xd0002000"]
        #expect(devices == expected)
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0, "stderr: \(vm.stderrText())")
    }
}
