import AgentClient
import AgentProtocol
import Foundation
import SwiftletClient
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `POST /v1/vms/{name}/agent` (docs/agent.md) and the CLI verbs on top of
/// it: refusals without a guest, then the default Linux guest's agent
/// through a real, jailed swiftletd.
@Suite("swiftletd's agent pipe", .serialized)
struct DaemonAgentTests {
    static func agentError(_ body: () throws -> Void) -> AgentClientError? {
        do {
            try body()
            return nil
        } catch {
            return error as? AgentClientError
        }
    }

    @Test("an unknown VM is a 404, a shut-off one a 409, a bad timeout a 400; each names the problem")
    func refusals() throws {
        let daemon = try DaemonHarness(label: "agent-refusals")
        defer { daemon.tearDown() }
        let client = AgentClient(endpoint: .daemon(socketPath: daemon.socket, vm: "nobody"), timeout: 5)
        guard case .daemon(404, let missing)? = Self.agentError({ try client.ping() }) else {
            Issue.record("no 404 for an unknown VM")
            return
        }
        #expect(missing.contains("nobody"), "\(missing)")
        _ = try daemon.client.define(try daemon.definition("idle-vm"))
        let stopped = AgentClient(endpoint: .daemon(socketPath: daemon.socket, vm: "idle-vm"), timeout: 5)
        guard case .daemon(409, let notRunning)? = Self.agentError({ try stopped.ping() }) else {
            Issue.record("no 409 for a VM that is not running")
            return
        }
        #expect(notRunning.contains("shut off") || notRunning.contains("shutOff") || notRunning.contains("runs"), "\(notRunning)")
        let bad = try daemon.http.request("POST", "/v1/vms/idle-vm/agent?timeout=0")
        #expect(bad.status == 400 && bad.text.contains("timeout"), "\(bad.status) \(bad.text)")
        let cli = try daemon.cli(["exec", "nobody", "--", "true"])
        #expect(cli.status == 125 && cli.stderr.contains("404"), "\(cli)")
    }

    @Test("a kit guest with no agent: 503 within the timeout, naming the port", .timeLimit(.minutes(2)),
          .enabled(if: TestEnvironment.guestsRun, TestEnvironment.kvmSkip))
    func noAgent() throws {
        let daemon = try DaemonHarness(label: "agent-none")
        defer { daemon.tearDown() }
        _ = try daemon.client.define(try daemon.definition("quiet", program: "idle"))
        _ = try daemon.client.action("quiet", "start")
        #expect(try daemon.wait(for: "quiet", state: .running).state == .running)
        let started = Date()
        let client = AgentClient(endpoint: .daemon(socketPath: daemon.socket, vm: "quiet"), timeout: 2)
        guard case .daemon(503, let message)? = Self.agentError({ try client.ping() }) else {
            Issue.record("no 503 for a guest without an agent; log: \(daemon.log().suffix(2000))")
            return
        }
        #expect(message.contains("1024"), "\(message)")
        #expect(Date().timeIntervalSince(started) < 20)
    }

    @Test("the default guest's agent through a jailed swiftletd: exec with stdin and status, cp both ways, guest-info",
          .timeLimit(.minutes(6)),
          .enabled(if: TestEnvironment.guestsRun && (TestEnvironment.linuxGuestBuilt || TestEnvironment.isCI), "needs /dev/kvm and the default guest (guest/build-image)"))
    func linuxGuestAgent() throws {
        let daemon = try DaemonHarness(label: "agent-linux")
        defer { daemon.tearDown() }
        let guest = TestEnvironment.linuxGuestDirectory
        let commandLine = (try String(contentsOfFile: guest + "/cmdline", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)
        _ = try daemon.client.define(VMDefinition(name: "agent", memoryMiB: 256, kernel: guest + "/vmlinux", initrd: guest + "/initramfs.cpio",
                                                  cmdline: commandLine + " swiftlet.agent"))
        _ = try daemon.client.action("agent", "start")
        let client = AgentClient(endpoint: .daemon(socketPath: daemon.socket, vm: "agent"), timeout: 10)
        let deadline = Date().addingTimeInterval(240)
        var ready = false
        while !ready && Date() < deadline {
            ready = (try? client.ping()) != nil
            if !ready { usleep(500_000) }
        }
        try #require(ready, "the agent never answered; log: \(daemon.log().suffix(3000))")

        let exec = try daemon.cli(["exec", "agent", "--", "sh", "-c", "echo out; echo err >&2; exit 5"])
        #expect(exec.status == 5 && exec.stdout == "out\n" && exec.stderr.contains("err"), "\(exec)")

        var bytes = [UInt8](repeating: 0, count: 256 * 1024)
        for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255) }
        let local = daemon.directory + "/blob", back = daemon.directory + "/blob.back"
        #expect(FileManager.default.createFile(atPath: local, contents: Data(bytes)))
        let put = try daemon.cli(["cp", "--mode", "600", local, "agent:/root/blob"])
        #expect(put.status == 0, "\(put)")
        let get = try daemon.cli(["cp", "agent:/root/blob", back])
        #expect(get.status == 0, "\(get)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: back)) == Data(bytes))
        let mode = try daemon.cli(["exec", "agent", "--", "stat", "-c", "%a %s", "/root/blob"])
        #expect(mode.stdout == "600 \(bytes.count)\n", "\(mode)")

        let info = try daemon.cli(["guest-info", "--json", "agent"])
        #expect(info.status == 0 && info.stdout.contains("\"kernel\"") && info.stdout.contains("Linux"), "\(info)")
        _ = try daemon.client.action("agent", "destroy")
    }
}
