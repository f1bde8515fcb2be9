import Foundation
import Testing
@testable import ControlAPI

@Suite("Control API router and OpenAPI document")
struct RouterTests {
    let router = Router()

    @Test("paths with parameters match; a wrong method lists the allowed ones; unknown paths are not found")
    func matching() {
        #expect(router.match(method: "GET", path: "/") == .operation(.describeInstance, parameters: [:]))
        #expect(router.match(method: "PUT", path: "/drives/rootfs") == .operation(.putGuestDriveByID, parameters: ["drive_id": "rootfs"]))
        #expect(router.match(method: "PATCH", path: "/network-interfaces/eth0/") == .operation(.patchGuestNetworkInterfaceByID, parameters: ["iface_id": "eth0"]))
        #expect(router.match(method: "GET", path: "/vm/config") == .operation(.getExportVmConfig, parameters: [:]))
        #expect(router.match(method: "DELETE", path: "/machine-config") == .methodNotAllowed(allowed: ["GET", "PUT", "PATCH"]))
        #expect(router.match(method: "GET", path: "/vm") == .methodNotAllowed(allowed: ["PATCH"]))
        #expect(router.match(method: "GET", path: "/drives") == .notFound)
        #expect(router.match(method: "GET", path: "/drives/") == .notFound)
        #expect(router.match(method: "GET", path: "/drives/a/b") == .notFound)
        #expect(router.match(method: "GET", path: "//") == .notFound)
    }

    /// The (path, method) pairs of docs/api/vmm-api.yaml, read from its
    /// layout: paths at two spaces of indent, methods at four.
    static func documentedOperations() throws -> Set<String> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("docs/api/vmm-api.yaml"), encoding: .utf8)
        var operations = Set<String>()
        var inPaths = false
        var currentPath: String?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "paths:" { inPaths = true; continue }
            if inPaths, let first = line.first, first != " " { inPaths = false }
            guard inPaths else { continue }
            if line.hasPrefix("  /"), !line.hasPrefix("   "), line.hasSuffix(":") {
                currentPath = String(line.dropFirst(2).dropLast())
            } else if line.hasPrefix("    "), !line.hasPrefix("     "), let path = currentPath {
                let key = line.dropFirst(4).prefix { $0 != ":" }
                if ["get", "put", "patch", "post", "delete"].contains(key) {
                    operations.insert("\(key.uppercased()) \(path)")
                }
            }
        }
        return operations
    }

    @Test("the router serves exactly the paths and methods of docs/api/vmm-api.yaml")
    func matchesOpenAPI() throws {
        let documented = try Self.documentedOperations()
        let served = Set(APIOperation.allCases.map { "\($0.method) \($0.pathTemplate)" })
        #expect(!documented.isEmpty)
        #expect(served.subtracting(documented).isEmpty, "served but not documented: \(served.subtracting(documented).sorted())")
        #expect(documented.subtracting(served).isEmpty, "documented but not served: \(documented.subtracting(served).sorted())")
    }

    @Test("operation ids in the document are the router's operation names")
    func operationIDs() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("docs/api/vmm-api.yaml"), encoding: .utf8)
        for operation in APIOperation.allCases {
            #expect(text.contains("operationId: \(operation.rawValue)\n"), "\(operation.rawValue) missing")
        }
    }
}
