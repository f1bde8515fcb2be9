import Foundation
import SwiftletClient

/// A client for one VMM's control API (Firecracker's routes, served by
/// `swiftlet-vmm --api-sock`): see docs/api and the VMM's OpenAPI file.
struct VMMControl: Sendable {
    let http: UnixHTTPClient

    init(socketPath: String, timeout: Double = 5) {
        // The VMM's answers are small JSON documents; a bigger one is refused, not buffered.
        http = UnixHTTPClient(socketPath: socketPath, timeout: timeout, maximumBodySize: 1 << 20)
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        /// The VMM's HTTP status when it answered and refused.
        var status: Int?
    }

    func send(_ method: String, _ path: String, json: [String: String]? = nil) throws -> UnixHTTPClient.Response {
        try send(method, path, body: try json.map { try JSONSerialization.data(withJSONObject: $0) })
    }

    func send(_ method: String, _ path: String, body: Data?) throws -> UnixHTTPClient.Response {
        let response = try http.request(method, path, body: body)
        guard (200..<300).contains(response.status) else {
            let fault = (try? JSONSerialization.jsonObject(with: response.body) as? [String: Any])?["fault_message"] as? String
            throw Failure(description: "the VMM refused \(method) \(path): \(fault ?? "HTTP \(response.status)")", status: response.status)
        }
        return response
    }

    /// `GET /`: the VMM's state (`Running`, `Paused`, `Not started`).
    func state() throws -> String? {
        let response = try send("GET", "/")
        return (try JSONSerialization.jsonObject(with: response.body) as? [String: Any])?["state"] as? String
    }

    func pause() throws { _ = try send("PATCH", "/vm", json: ["state": "Paused"]) }
    func resume() throws { _ = try send("PATCH", "/vm", json: ["state": "Resumed"]) }
    /// `Shutdown` (ACPI power button), `Reboot`, `Stop`, `SendCtrlAltDel`.
    func action(_ type: String) throws { _ = try send("PUT", "/actions", json: ["action_type": type]) }

    /// `GET /metrics` flattened to "group.counter" -> value.
    func metrics() throws -> [String: Double] {
        let response = try send("GET", "/metrics")
        var result: [String: Double] = [:]
        func walk(_ value: Any, _ prefix: String) {
            if let dictionary = value as? [String: Any] {
                for (key, inner) in dictionary { walk(inner, prefix.isEmpty ? key : prefix + "." + key) }
            } else if let number = value as? NSNumber, !(value is Bool) {
                result[prefix] = number.doubleValue
            }
        }
        walk(try JSONSerialization.jsonObject(with: response.body), "")
        return result
    }

    /// `GET /version`'s `firecracker_version` (the VMM's version).
    func version() throws -> String? {
        let response = try send("GET", "/version")
        return (try JSONSerialization.jsonObject(with: response.body) as? [String: Any])?["firecracker_version"] as? String
    }

    /// Firecracker's `PUT /snapshot/create` (a Full snapshot; the VM must be paused).
    /// The paths are as the VMM sees them (inside its jail when jailed).
    func createSnapshot(statePath: String, memoryPath: String) throws {
        let body = try JSONSerialization.data(withJSONObject: [
            "snapshot_type": "Full", "snapshot_path": statePath, "mem_file_path": memoryPath,
        ], options: [.withoutEscapingSlashes])
        _ = try send("PUT", "/snapshot/create", body: body)
    }

    /// Firecracker's `PUT /snapshot/load` on a VMM that has not been
    /// configured: the memory file as a `File` backend, resumed at once.
    /// `taps`: interface id to the tap the restored VM uses instead of the
    /// saved one (Firecracker's `network_overrides`; none: the saved taps).
    /// `vsockPath`: where the restored vsock device listens (`vsock_override`).
    func loadSnapshot(statePath: String, memoryPath: String, resume: Bool, taps: [(interfaceID: String, tap: String)] = [],
                      vsockPath: String? = nil) throws {
        var request: [String: Any] = [
            "snapshot_path": statePath,
            "mem_backend": ["backend_type": "File", "backend_path": memoryPath],
            "resume_vm": resume,
        ]
        if let vsockPath { request["vsock_override"] = ["uds_path": vsockPath] }
        if !taps.isEmpty {
            request["network_overrides"] = taps.map { ["iface_id": $0.interfaceID, "host_dev_name": $0.tap] }
        }
        let body = try JSONSerialization.data(withJSONObject: request, options: [.withoutEscapingSlashes, .sortedKeys])
        _ = try send("PUT", "/snapshot/load", body: body)
    }
}
