import AgentClient
import AgentProtocol
import Foundation
import Glibc
import SwiftletClient

/// `swiftlet run -- CMD` (docs/agent.md, "swiftlet run"): boots the default
/// guest with a vsock device and `swiftlet.agent`, or restores a snapshot
/// of one, and runs CMD through the guest agent: its stdin, stdout, stderr
/// and exit status are the command's, and the guest's console is hidden
/// (`--verbose` copies it to stderr).
///
/// With a snapshot cache, the first run saves the booted guest once its
/// agent answers; later runs restore it (`PUT /snapshot/load`, memory
/// mapped from the file, the vsock socket moved to this run's folder).
struct AgentRun {
    let vmmBinary: String
    /// swiftlet-vmm's arguments for a cold boot, including the vsock device.
    let bootArguments: [String]
    /// The vsock socket the agent is reached through.
    let vsockPath: String
    let command: [String]
    let cache: GuestSnapshotCache?
    let verbose: Bool
    /// The VM has disks: the guest is powered off through the agent (so
    /// its writes reach them) instead of the VMM being stopped.
    let hasDisks: Bool
    let workspace: Workspace
    /// How long a cold boot may take until the agent answers.
    static let bootTimeout: Double = 600

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// The kernel parameters of an agent run. A snapshot boot also keeps
    /// time with the KVM clock, which a restore continues where the snapshot
    /// left it on every host (where guests read the host's TSC directly, as
    /// kvm_pvm's do, the TSC jumps by the time since the snapshot).
    static func kernelParameters(snapshot: Bool) -> String {
        snapshot ? "swiftlet.agent clocksource=kvm-clock" : "swiftlet.agent"
    }

    /// Runs the command; the status to exit with.
    func run() throws -> Int32 {
        defer { workspace.remove() }
        if let cache, cache.isComplete {
            do {
                let vmm = try restore(cache)
                return try execute(in: vmm)
            } catch let refused as SnapshotRefused {
                note("the cached snapshot did not load (\(refused.description)); booting cold to save a new one")
                cache.discard()
                try? FileManager.default.removeItem(atPath: vsockPath)
            }
        }
        let vmm = try VMMChild(binary: vmmBinary, arguments: (cache != nil ? ["--api-sock", workspace.apiSocket] : []) + bootArguments,
                               verbose: verbose)
        let connection: AgentConnection
        do {
            connection = try AgentConnection.waitForAgent(.vsockSocket(path: vsockPath), timeout: Self.bootTimeout,
                                                          stillStarting: { vmm.isRunning })
        } catch {
            vmm.stop()
            if !vmm.isRunning && vmm.status != 0 {
                throw Failure(description: "swiftlet-vmm exited with status \(vmm.status) before the guest agent answered")
            }
            if case .timedOut = error {
                throw Failure(description: "\(error); an image without swiftlet-agent? rebuild it with guest/build-image")
            }
            throw Failure(description: "\(error)")
        }
        _ = connection
        if let cache { save(cache) }
        return try execute(in: vmm)
    }

    private func execute(in vmm: VMMChild) throws -> Int32 {
        let client = AgentClient(endpoint: .vsockSocket(path: vsockPath), timeout: 30)
        let forwarded = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]
        AgentClient.blockForwardedSignals(forwarded)
        let request = ExecRequest(arguments: command, workingDirectory: "/root", forwardsStdin: true)
        let status: AgentProtocol.ExitStatus
        do {
            status = try client.exec(request, streams: .init(stdin: 0, stdout: 1, stderr: 2, forwardedSignals: forwarded))
        } catch {
            vmm.stop()
            throw Failure(description: "\(command[0]): \(error)")
        }
        if hasDisks {
            // Powered off by the guest: its writes are on the disks when the VMM exits.
            if (try? client.shutdown()) != nil { vmm.waitForExit(seconds: 60) }
        }
        vmm.stop()
        return status.shellStatus
    }

    struct SnapshotRefused: Error, CustomStringConvertible {
        let description: String
    }

    private func restore(_ cache: GuestSnapshotCache) throws -> VMMChild {
        let vmm = try VMMChild(binary: vmmBinary, arguments: ["--api-sock", workspace.apiSocket], verbose: verbose)
        let api = UnixHTTPClient(socketPath: workspace.apiSocket, timeout: 60)
        do {
            try waitForSocket(api, while: vmm)
            let body = """
                {"snapshot_path":\(jsonString(cache.statePath)),"mem_backend":{"backend_type":"File","backend_path":\(jsonString(cache.memoryPath))},\
                "vsock_override":{"uds_path":\(jsonString(vsockPath))},"resume_vm":true}
                """
            try expectSuccess(api.request("PUT", "/snapshot/load", body: Data(body.utf8)), step: "loading the snapshot")
        } catch {
            vmm.stop()
            throw SnapshotRefused(description: "\(error)")
        }
        cache.touch()
        return vmm
    }

    /// Pauses the booted guest, saves it into the cache and resumes it. A
    /// snapshot that cannot be saved is reported and the run goes on.
    private func save(_ cache: GuestSnapshotCache) {
        let api = UnixHTTPClient(socketPath: workspace.apiSocket, timeout: 120)
        var staging: URL?
        do {
            let folder = try cache.makeStagingDirectory()
            staging = folder
            let started = Date()
            try expectSuccess(api.request("PATCH", "/vm", body: Data(#"{"state":"Paused"}"#.utf8)), step: "pausing the guest")
            let body = """
                {"snapshot_type":"Full","snapshot_path":\(jsonString(folder.appendingPathComponent("state").path)),"mem_file_path":\(jsonString(folder.appendingPathComponent("memory").path))}
                """
            try expectSuccess(api.request("PUT", "/snapshot/create", body: Data(body.utf8)), step: "saving the snapshot")
            try expectSuccess(api.request("PATCH", "/vm", body: Data(#"{"state":"Resumed"}"#.utf8)), step: "resuming the guest")
            cache.commit(staging: folder)
            staging = nil
            let seconds = String(format: "%.2f", Date().timeIntervalSince(started))
            note("saved the booted guest as a snapshot in \(seconds) s (\(cache.directory.path)); later runs with these options start from it (--no-snapshot boots cold)")
        } catch {
            note("could not save a snapshot of the guest (\(error)); running the command without one")
            if let staging { try? FileManager.default.removeItem(at: staging) }
            _ = try? api.request("PATCH", "/vm", body: Data(#"{"state":"Resumed"}"#.utf8))
        }
    }

    private func note(_ text: String) {
        FileHandle.standardError.write(Data("swiftlet: \(text)\n".utf8))
    }

    private func expectSuccess(_ response: UnixHTTPClient.Response, step: String) throws {
        guard (200..<300).contains(response.status) else {
            let message = (try? JSONSerialization.jsonObject(with: response.body) as? [String: Any])?["fault_message"] as? String
            throw SnapshotRefused(description: "\(step): HTTP \(response.status): \(message ?? response.text)")
        }
    }

    /// The VMM serves its socket a few milliseconds after it starts.
    private func waitForSocket(_ api: UnixHTTPClient, while vmm: VMMChild) throws {
        let deadline = Date().addingTimeInterval(10)
        while true {
            do {
                _ = try api.request("GET", "/")
                return
            } catch let failure as UnixHTTPClient.Failure where failure.isNotListening {
                guard vmm.isRunning else { throw SnapshotRefused(description: "swiftlet-vmm exited before serving its control socket") }
                guard Date() < deadline else { throw SnapshotRefused(description: "swiftlet-vmm did not serve its control socket within 10 s") }
                usleep(2_000)
            }
        }
    }

    private func jsonString(_ text: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: [text])) ?? Data("[\"\"]".utf8)
        return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
    }

    /// A private folder for this run's sockets (a socket path must fit in
    /// 108 bytes, so they are not in the cache folder).
    struct Workspace {
        let path: String
        var apiSocket: String { path + "/api.sock" }
        var vsockSocket: String { path + "/vsock.sock" }

        init() throws {
            var template = Array("/tmp/swiftlet-run-XXXXXX".utf8CString)
            let created = template.withUnsafeMutableBufferPointer { buffer in
                // SAFETY: the buffer is a NUL-terminated template mkdtemp rewrites in place.
                mkdtemp(buffer.baseAddress!)
            }
            guard created != nil else {
                throw Failure(description: "cannot create a folder in /tmp: \(String(cString: strerror(errno)))")
            }
            path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }

        func remove() { try? FileManager.default.removeItem(atPath: path) }
    }
}

/// swiftlet-vmm as a child: its console (stdout) goes to our stderr with
/// `verbose`, else nowhere; its own messages (stderr) always to ours.
final class VMMChild {
    private let process = Process()

    init(binary: String, arguments: [String], verbose: Bool) throws {
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = verbose ? FileHandle.standardError : FileHandle.nullDevice
        process.standardError = FileHandle.standardError
        try process.run()
    }

    var isRunning: Bool { process.isRunning }
    var status: Int32 { process.isRunning ? 0 : process.terminationStatus }

    /// Waits up to `seconds` for the VMM to exit by itself.
    func waitForExit(seconds: Double) {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }
    }

    /// Stops the VMM (SIGTERM, then SIGKILL after 5 s) and waits for it.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        waitForExit(seconds: 5)
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
