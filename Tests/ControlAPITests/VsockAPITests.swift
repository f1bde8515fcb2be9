import Foundation
import Glibc
import LeanJSON
import Testing
@testable import ControlAPI
@testable import VMM

@Suite("PUT /vsock")
struct VsockAPITests {
    func makeController() throws -> InstanceController {
        try InstanceController(instanceID: "unit", vmmVersion: "0.1.0", configuration: InstanceConfiguration()) { (configuration) throws(VMMError) in
            throw .readFile(role: "kernel", path: configuration.kernelPath, cause: .init(call: "open", errno: .noEntry))
        }
    }

    func send(_ controller: InstanceController, _ method: String, _ path: String, _ body: String) -> HTTPResponse {
        controller.handle(HTTPRequest(method: method, path: path, body: Array(body.utf8)))
    }

    func fault(_ response: HTTPResponse) -> String {
        (try? JSONParser.parse(response.body))?["fault_message"]?.stringValue ?? ""
    }

    func temporaryDirectory() throws -> String {
        var template = Array("/tmp/swiftlet-vsock-api-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw APIError.badRequest("mkdtemp") }
        return String(cString: made)
    }

    @Test("binds the socket at once, as Firecracker does; GET /vm/config shows it; a second PUT moves it")
    func put() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let controller = try makeController()
        #expect((try JSONParser.parse(send(controller, "GET", "/vm/config", "").body))["vsock"] == .null)
        let first = directory + "/v.sock"
        let response = send(controller, "PUT", "/vsock", #"{"guest_cid": 3, "uds_path": "\#(first)"}"#)
        #expect(response.status == 204, "\(fault(response))")
        #expect(FileManager.default.fileExists(atPath: first))
        let config = try JSONParser.parse(send(controller, "GET", "/vm/config", "").body)
        #expect(config["vsock"]?["guest_cid"]?.integerValue == 3)
        #expect(config["vsock"]?["uds_path"]?.stringValue == first)
        #expect(controller.state.withLock { $0.configuration.base.vsock } == VsockConfiguration(guestCID: 3, udsPath: first))

        // The same path again is fine; a new path replaces the socket.
        #expect(send(controller, "PUT", "/vsock", #"{"guest_cid": 4, "uds_path": "\#(first)"}"#).status == 204)
        let second = directory + "/w.sock"
        let deprecated = send(controller, "PUT", "/vsock", #"{"vsock_id": "vsock0", "guest_cid": 5, "uds_path": "\#(second)"}"#)
        #expect(deprecated.status == 204)
        #expect(deprecated.headers.contains { $0.name == "Deprecation" })
        #expect(FileManager.default.fileExists(atPath: second))
        #expect(!FileManager.default.fileExists(atPath: first), "the first socket went with its device")
        controller.finish()
    }

    @Test("refuses bad CIDs, missing or unknown fields and a path that exists, changing nothing", arguments: [
        (#"{"guest_cid": 2, "uds_path": "PATH"}"#, "expected 3 to 4294967294"),
        (#"{"guest_cid": 4294967295, "uds_path": "PATH"}"#, "expected 3 to 4294967294"),
        (#"{"guest_cid": "3", "uds_path": "PATH"}"#, "expected a whole number"),
        (#"{"uds_path": "PATH"}"#, "missing field `guest_cid`"),
        (#"{"guest_cid": 3}"#, "missing field `uds_path`"),
        (#"{"guest_cid": 3, "uds_path": "PATH", "port": 1}"#, "unknown field `port`"),
        (#"{"guest_cid": 3, "uds_path": ""}"#, "1 to 107 bytes"),
        (#"{"guest_cid": 3, "uds_path": "EXISTING"}"#, "already exists"),
    ])
    func refused(body: String, message: String) throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        FileManager.default.createFile(atPath: directory + "/existing", contents: Data())
        let controller = try makeController()
        let text = body.replacingOccurrences(of: "EXISTING", with: directory + "/existing").replacingOccurrences(of: "PATH", with: directory + "/v.sock")
        let response = send(controller, "PUT", "/vsock", text)
        #expect(response.status == 400 && fault(response).contains(message), "\(fault(response))")
        #expect(controller.state.withLock { $0.configuration.base.vsock } == nil)
        #expect(!FileManager.default.fileExists(atPath: directory + "/v.sock"))
    }

    @Test("the Firecracker config file's vsock section")
    func configFile() throws {
        let file = #"{"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": 7, "uds_path": "/tmp/cf.sock"}}"#
        let configuration = try InstanceConfiguration.parseFirecrackerFile(Array(file.utf8), base: VMConfiguration(kernelPath: ""))
        #expect(configuration.base.vsock == VsockConfiguration(guestCID: 7, udsPath: "/tmp/cf.sock"))
        #expect(try configuration.vmConfiguration().vsock?.guestCID == 7)
        let bad = #"{"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": 1, "uds_path": "/x"}}"#
        #expect(throws: APIError.self) { try InstanceConfiguration.parseFirecrackerFile(Array(bad.utf8), base: VMConfiguration(kernelPath: "")) }
    }
}
