import Foundation
import Glibc
import SwiftletClient

/// `swiftlet run -- CMD` through a snapshot of the default guest
/// (docs/snapshots.md, "swiftlet run"). The first run boots the guest with
/// `swiftlet.serial-cmd` and a control socket; when the guest says
/// SWIFTLET-AWAIT-CMD it is paused, saved into the cache and resumed, and
/// then gets the command over its console. Later runs start a bare
/// swiftlet-vmm, load the snapshot (`PUT /snapshot/load`, memory mapped
/// from the file) and type the command into the restored guest: no boot.
struct SnapshotRun {
    let cache: GuestSnapshotCache
    let vmmBinary: String
    let script: String

    struct LoadRefused: Error, CustomStringConvertible {
        let description: String
    }

    /// The kernel parameters of a snapshot boot: guest/init waits for its
    /// command, and the guest keeps time with the KVM clock, which a restore
    /// continues where the snapshot left it on every host (on a host whose
    /// guests read the host's TSC directly, as kvm_pvm's do, the TSC jumps
    /// by the time since the snapshot).
    static let commandLineParameters = "swiftlet.serial-cmd clocksource=kvm-clock"

    /// Restores the cached snapshot and runs the command in it. Throws
    /// `LoadRefused` before any guest output when the snapshot does not load
    /// (the caller then boots cold and saves a new one).
    func restoreAndRun() throws -> Int32 {
        let workspace = try Workspace()
        defer { workspace.remove() }
        let session = try GuestConsoleSession(binary: vmmBinary, arguments: ["--api-sock", workspace.socketPath], feedsInput: true)
        let client = UnixHTTPClient(socketPath: workspace.socketPath, timeout: 60)
        do {
            try waitForSocket(client, while: session)
            let body = """
                {"snapshot_path":\(jsonString(cache.statePath)),"mem_backend":{"backend_type":"File","backend_path":\(jsonString(cache.memoryPath))},"resume_vm":true}
                """
            try expectSuccess(client.request("PUT", "/snapshot/load", body: Data(body.utf8)), step: "loading the snapshot")
        } catch {
            session.kill()
            throw LoadRefused(description: "\(error)")
        }
        cache.touch()
        session.sendCommand(script)
        return session.runToStatus()
    }

    /// Boots cold with the snapshot parameter, saves the snapshot at the
    /// guest's command point, then runs the command in this same boot.
    /// A snapshot that cannot be saved is reported and the run goes on.
    func bootSaveAndRun(vmmArguments: [String]) throws -> Int32 {
        let workspace = try Workspace()
        defer { workspace.remove() }
        let session = try GuestConsoleSession(binary: vmmBinary, arguments: ["--api-sock", workspace.socketPath] + vmmArguments,
                                              feedsInput: true)
        guard session.pump(until: { $0 == GuestConsoleSession.awaitMarker }) else { return session.finish() }
        let client = UnixHTTPClient(socketPath: workspace.socketPath, timeout: 120)
        var staging: URL?
        do {
            let folder = try cache.makeStagingDirectory()
            staging = folder
            let started = Date()
            try expectSuccess(client.request("PATCH", "/vm", body: Data(#"{"state":"Paused"}"#.utf8)), step: "pausing the guest")
            let body = """
                {"snapshot_type":"Full","snapshot_path":\(jsonString(folder.appendingPathComponent("state").path)),"mem_file_path":\(jsonString(folder.appendingPathComponent("memory").path))}
                """
            try expectSuccess(client.request("PUT", "/snapshot/create", body: Data(body.utf8)), step: "saving the snapshot")
            try expectSuccess(client.request("PATCH", "/vm", body: Data(#"{"state":"Resumed"}"#.utf8)), step: "resuming the guest")
            cache.commit(staging: folder)
            staging = nil
            let seconds = String(format: "%.2f", Date().timeIntervalSince(started))
            printNote("saved the booted guest as a snapshot in \(seconds) s (\(cache.directory.path)); later runs with these options start from it (--no-snapshot boots cold)")
        } catch {
            printNote("could not save a snapshot of the guest (\(error)); running the command without one")
            if let staging { try? FileManager.default.removeItem(at: staging) }
            _ = try? client.request("PATCH", "/vm", body: Data(#"{"state":"Resumed"}"#.utf8))
        }
        session.sendCommand(script)
        return session.runToStatus()
    }

    private func printNote(_ text: String) {
        FileHandle.standardError.write(Data("swiftlet: \(text)\n".utf8))
    }

    private func expectSuccess(_ response: UnixHTTPClient.Response, step: String) throws {
        guard (200..<300).contains(response.status) else {
            let message = (try? JSONSerialization.jsonObject(with: response.body) as? [String: Any])?["fault_message"] as? String
            throw LoadRefused(description: "\(step): HTTP \(response.status): \(message ?? response.text)")
        }
    }

    /// The VMM serves its socket a few milliseconds after it starts.
    private func waitForSocket(_ client: UnixHTTPClient, while session: GuestConsoleSession) throws {
        let deadline = Date().addingTimeInterval(10)
        while true {
            do {
                _ = try client.request("GET", "/")
                return
            } catch let failure as UnixHTTPClient.Failure where failure.isNotListening {
                guard session.isRunning else { throw LoadRefused(description: "swiftlet-vmm exited before serving its control socket") }
                guard Date() < deadline else { throw LoadRefused(description: "swiftlet-vmm did not serve its control socket within 10 s") }
                usleep(2_000)
            }
        }
    }

    private func jsonString(_ text: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: [text])) ?? Data("[\"\"]".utf8)
        return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
    }

    /// A private folder for the control socket (a socket path must fit in
    /// 108 bytes, so it is not in the cache folder).
    struct Workspace {
        let path: String
        var socketPath: String { path + "/api.sock" }

        init() throws {
            var template = Array("/tmp/swiftlet-run-XXXXXX".utf8CString)
            let created = template.withUnsafeMutableBufferPointer { buffer in
                // SAFETY: the buffer is a NUL-terminated template mkdtemp rewrites in place.
                mkdtemp(buffer.baseAddress!)
            }
            guard created != nil else {
                throw LoadRefused(description: "cannot create a folder in /tmp: \(String(cString: strerror(errno)))")
            }
            path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }

        func remove() { try? FileManager.default.removeItem(atPath: path) }
    }
}
