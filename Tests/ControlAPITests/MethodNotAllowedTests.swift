import LeanJSON
import Testing
@testable import ControlAPI
@testable import VMM

@Suite("Control API: methods a path does not have")
struct MethodNotAllowedTests {
    @Test("A method a known path lacks is 405 with Allow and Firecracker's words; an unknown path stays 400")
    func methodNotAllowed() throws {
        let controller = try InstanceController(instanceID: "unit", vmmVersion: "0.1.0", configuration: InstanceConfiguration())
        for (method, path, allowed) in [("TRACE", "/vm", "PATCH"), ("DELETE", "/machine-config", "GET, PUT, PATCH"), ("PATCH", "/boot-source", "PUT")] {
            let response = controller.handle(HTTPRequest(method: method, path: path))
            #expect(response.status == 405, "\(method) \(path)")
            #expect(response.headers.first { $0.name == "Allow" }?.value == allowed)
            let fault = (try? JSONParser.parse(response.body))?["fault_message"]?.stringValue
            #expect(fault == "Invalid request method and/or path: \(method) \(path).")
        }
        let unknown = controller.handle(HTTPRequest(method: "GET", path: "/no/such/thing"))
        #expect(unknown.status == 400 && unknown.headers.allSatisfy { $0.name != "Allow" })
    }
}
