import LeanJSON
import Testing
@testable import ControlAPI
@testable import MMDS
@testable import VMM

@Suite("Control API: MMDS routes")
struct MMDSRouteTests {
    func makeController(_ configuration: InstanceConfiguration = InstanceConfiguration()) throws -> InstanceController {
        try InstanceController(instanceID: "unit", vmmVersion: "0.1.0", configuration: configuration) { (configuration) throws(VMMError) in
            throw .readFile(role: "kernel", path: configuration.kernelPath, cause: .init(call: "open", errno: .noEntry))
        }
    }

    func send(_ controller: InstanceController, _ method: String, _ path: String, _ body: String? = nil) -> HTTPResponse {
        controller.handle(HTTPRequest(method: method, path: path, body: Array((body ?? "").utf8)))
    }

    func text(_ response: HTTPResponse) -> String { String(decoding: response.body, as: UTF8.self) }
    func fault(_ response: HTTPResponse) -> String { (try? JSONParser.parse(response.body))?["fault_message"]?.stringValue ?? "" }

    func addInterface(_ controller: InstanceController, _ id: String = "eth0", tap: String = "tap0") {
        #expect(send(controller, "PUT", "/network-interfaces/\(id)", #"{"iface_id": "\#(id)", "host_dev_name": "\#(tap)"}"#).status == 204)
    }

    @Test("GET /mmds is {} before any PUT; PATCH before PUT is refused; PUT then PATCH merge (Firecracker's test_mmds_dummy)")
    func contents() throws {
        let controller = try makeController()
        addInterface(controller)
        #expect(send(controller, "PUT", "/mmds/config", #"{"network_interfaces": ["eth0"], "version": "V2"}"#).status == 204)
        let empty = send(controller, "GET", "/mmds")
        #expect(empty.status == 200 && text(empty) == "{}")
        let early = send(controller, "PATCH", "/mmds", #"{"latest": {"meta-data": {"ami-id": "dummy"}}}"#)
        #expect(early.status == 400 && fault(early).contains("The MMDS data store is not initialized."), "\(fault(early))")
        #expect(send(controller, "PUT", "/mmds", #"{"latest": {"meta-data": {"ami-id": "dummy"}}}"#).status == 204)
        #expect(text(send(controller, "GET", "/mmds")) == #"{"latest":{"meta-data":{"ami-id":"dummy"}}}"#)
        #expect(send(controller, "PATCH", "/mmds", #"{"latest": {"meta-data": {"ami-id": "another_dummy", "secret_key": "eaasda48141411aeaeae"}}}"#).status == 204)
        #expect(text(send(controller, "GET", "/mmds")) == #"{"latest":{"meta-data":{"ami-id":"another_dummy","secret_key":"eaasda48141411aeaeae"}}}"#)
        let malformed = send(controller, "PUT", "/mmds", "{nope")
        #expect(malformed.status == 400 && fault(malformed).contains("malformed JSON"))
        #expect(send(controller, "PUT", "/mmds").status == 400)
    }

    @Test("The size limit answers 413 and keeps the old contents (Firecracker's test_mmds_limit_scenario)")
    func limit() throws {
        let controller = try makeController()
        let small = #"{"latest": {"meta-data": {"ami-id": "dummy"}}}"#
        #expect(send(controller, "PUT", "/mmds", small).status == 204)
        let large = send(controller, "PUT", "/mmds", #"{"latest": {"meta-data": {"ami-id": "smth", "secret_key": "\#(String(repeating: "a", count: 51_200))"}}}"#)
        #expect(large.status == 413, "\(fault(large))")
        #expect(fault(large).contains("The MMDS patch request doesn't fit."))
        #expect(text(send(controller, "GET", "/mmds")) == #"{"latest":{"meta-data":{"ami-id":"dummy"}}}"#)
        // Exactly full, then one byte too many.
        #expect(send(controller, "PATCH", "/mmds", #"{"latest": {"meta-data": {"ami-id": "smth", "secret_key": "\#(String(repeating: "a", count: 51_137))"}}}"#).status == 204)
        #expect(send(controller, "PATCH", "/mmds", #"{"latest": {"meta-data": {"ami-id": "smth", "secret_key2": "bbbbbbbbbb"}}}"#).status == 413)
        #expect(send(controller, "PATCH", "/mmds", #"{"latest": {"meta-data": {"ami-id": "smth", "secret_key": "a"}}}"#).status == 204)
        #expect(text(send(controller, "GET", "/mmds")).utf8.count == 59)
    }

    @Test("PUT /mmds/config checks interfaces, address and version, marks V1 deprecated, and shows in /vm/config")
    func configuration() throws {
        let controller = try makeController()
        let noInterface = send(controller, "PUT", "/mmds/config", #"{"network_interfaces": ["eth0"]}"#)
        #expect(noInterface.status == 400 && fault(noInterface).contains("does not correspond to any existing network interface"))
        addInterface(controller)
        let refusals = [
            (#"{"network_interfaces": []}"#, "is empty"),
            (#"{"network_interfaces": ["eth0"], "ipv4_address": ""}"#, "is not an IPv4 address"),
            (#"{"network_interfaces": ["eth0"], "ipv4_address": "1.1.1.1"}"#, "not link local"),
            (#"{"network_interfaces": ["eth0"], "ipv4_address": "169.254.0.1"}"#, "not link local"),
            (#"{"network_interfaces": ["eth0"], "version": "V3"}"#, "is not one of V1, V2"),
            (#"{"network_interfaces": ["eth0"], "bogus": 1}"#, "unknown field `bogus`"),
            (#"{"version": "V2"}"#, "missing field `network_interfaces`"),
            (#"{"network_interfaces": "eth0"}"#, "expected an array"),
        ]
        for (body, message) in refusals {
            let response = send(controller, "PUT", "/mmds/config", body)
            #expect(response.status == 400 && fault(response).contains(message), "\(body): \(fault(response))")
        }
        let config = try JSONParser.parse(text(send(controller, "GET", "/vm/config")))
        #expect(config["mmds-config"] == .null, "nothing configured yet")

        let v1 = send(controller, "PUT", "/mmds/config", #"{"network_interfaces": ["eth0"]}"#)
        #expect(v1.status == 204 && v1.headers.contains { $0.name == "Deprecation" && $0.value == "true" })
        let v2 = send(controller, "PUT", "/mmds/config", #"{"network_interfaces": ["eth0"], "version": "V2", "ipv4_address": "169.254.169.250", "imds_compat": true}"#)
        #expect(v2.status == 204 && !v2.headers.contains { $0.name == "Deprecation" })
        let shown = try JSONParser.parse(text(send(controller, "GET", "/vm/config")))
        #expect(shown["mmds-config"]?.serialized == #"{"version":"V2","network_interfaces":["eth0"],"ipv4_address":"169.254.169.250","imds_compat":true}"#)

        // The VM is built with MMDS on eth0 at that address.
        let built = try controller.state.withLock { state in
            state.configuration.bootSource = BootSource(kernelImagePath: "/k")
            return try state.configuration.vmConfiguration()
        }
        #expect(built.metadataService?.interfaceIDs == ["eth0"])
        #expect(built.metadataService?.address == IPv4Address(169, 254, 169, 250))
        #expect(built.metadataService?.service.version == .v2)
        #expect(built.metadataService?.service.imdsCompatible == true)
    }

    @Test("After boot: /mmds/config is refused; /mmds works if MMDS existed before boot and is refused otherwise")
    func afterBoot() throws {
        let configured = try makeController()
        addInterface(configured)
        #expect(send(configured, "PUT", "/mmds/config", #"{"network_interfaces": ["eth0"]}"#).status == 204)
        configured.state.withLock { $0.phase = .running }
        #expect(send(configured, "PUT", "/mmds/config", #"{"network_interfaces": ["eth0"]}"#).status >= 400)
        #expect(send(configured, "PUT", "/mmds", #"{"a": "b"}"#).status == 204)
        #expect(send(configured, "PATCH", "/mmds", #"{"c": "d"}"#).status == 204)
        #expect(text(send(configured, "GET", "/mmds")) == #"{"a":"b","c":"d"}"#)

        let untouched = try makeController()
        untouched.state.withLock { $0.phase = .running }
        let refused = send(untouched, "GET", "/mmds")
        #expect(refused.status == 400 && fault(refused).contains("The MMDS data store is not initialized."))
        #expect(send(untouched, "PUT", "/mmds", #"{"a": 1}"#).status == 400)
    }

    @Test("GET /metrics has an mmds object with Firecracker's counter names")
    func metrics() throws {
        let controller = try makeController()
        let metrics = try JSONParser.parse(text(send(controller, "GET", "/metrics")))
        for name in ["rx_accepted", "rx_invalid_token", "rx_no_token", "tx_frames", "connections_created", "requests", "errors", "frames_intercepted"] {
            #expect(metrics["mmds"]?[name]?.integerValue == 0, "\(name)")
        }
    }

    @Test("The config file's mmds-config section needs its interfaces in the same file")
    func configFile() throws {
        let base = VMConfiguration(kernelPath: "")
        let good = #"{"boot-source": {"kernel_image_path": "/k"}, "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}], "mmds-config": {"network_interfaces": ["eth0"], "version": "V2"}}"#
        let parsed = try InstanceConfiguration.parseFirecrackerFile(Array(good.utf8), base: base)
        #expect(parsed.mmds.configuration?.interfaceIDs == ["eth0"])
        #expect(parsed.mmds.service.version == .v2)
        #expect(try parsed.vmConfiguration().metadataService?.interfaceIDs == ["eth0"])
        let missing = #"{"boot-source": {"kernel_image_path": "/k"}, "mmds-config": {"network_interfaces": ["eth0"]}}"#
        #expect(throws: APIError.self) { try InstanceConfiguration.parseFirecrackerFile(Array(missing.utf8), base: base) }
    }
}
