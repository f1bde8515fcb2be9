import Glibc
import HostSystem
import LeanJSON
import RateLimiter
import Testing
@testable import ControlAPI
@testable import VMM

@Suite("Control API rate limiters and drive/interface PATCH")
struct RateLimiterAPITests {
    func makeController() throws -> InstanceController {
        try InstanceController(instanceID: "unit", vmmVersion: "0.1.0", configuration: InstanceConfiguration()) { (configuration) throws(VMMError) in
            throw .readFile(role: "kernel", path: configuration.kernelPath, cause: .init(call: "open", errno: .noEntry))
        }
    }

    func send(_ controller: InstanceController, _ method: String, _ path: String, _ body: String) -> HTTPResponse {
        controller.handle(HTTPRequest(method: method, path: path, body: Array(body.utf8)))
    }

    func json(_ response: HTTPResponse) -> JSONValue? { try? JSONParser.parse(response.body) }
    func fault(_ response: HTTPResponse) -> String { json(response)?["fault_message"]?.stringValue ?? "" }

    func fields(_ text: String) throws -> JSONFields { try JSONFields(body: Array(text.utf8), context: "test") }

    /// Drives are opened when PUT: empty image files under /tmp.
    static func images(_ names: [String]) throws -> [String] {
        try names.map { name in
            let path = "/tmp/swiftlet-unit-rl-\(getpid())-\(name)"
            _ = try OwnedFileDescriptor.open(path, flags: O_RDWR | O_CREAT, mode: 0o600)
            return path
        }
    }

    @Test("RateLimiter JSON: buckets with size, refill_time and an optional one_time_burst; {} and null are unlimited")
    func parsing() throws {
        let both = try RateLimiterJSON.configuration(fields(#"{"r": {"bandwidth": {"size": 1048576, "one_time_burst": 4096, "refill_time": 1000}, "ops": {"size": 100, "refill_time": 250}}}"#), key: "r")
        #expect(both == RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 1_048_576, oneTimeBurst: 4096, refillTimeMilliseconds: 1000),
                                                 operations: TokenBucketConfiguration(size: 100, refillTimeMilliseconds: 250)))
        #expect(try RateLimiterJSON.configuration(fields(#"{"r": {}}"#), key: "r").isUnlimited)
        #expect(try RateLimiterJSON.configuration(fields(#"{"r": null}"#), key: "r").isUnlimited)
        #expect(try RateLimiterJSON.configuration(fields(#"{}"#), key: "r").isUnlimited)
        #expect(try RateLimiterJSON.configuration(fields(#"{"r": {"bandwidth": null, "ops": {"size": 0, "refill_time": 100}}}"#), key: "r").isUnlimited,
                "a bucket of size 0 does not limit")
        #expect(try RateLimiterJSON.configuration(fields(#"{"r": {"ops": {"size": 18446744073709551615, "one_time_burst": null, "refill_time": 18446744073709}}}"#), key: "r")
            .operations?.size == UInt64.max)

        let refused = [
            (#"{"r": {"bandwidth": {"size": 1}}}"#, "missing field `refill_time`"),
            (#"{"r": {"bandwidth": {"refill_time": 1}}}"#, "missing field `size`"),
            (#"{"r": {"bandwidth": {"size": -1, "refill_time": 1}}}"#, "for `size`, expected a whole number"),
            (#"{"r": {"bandwidth": {"size": 1.5, "refill_time": 1}}}"#, "for `size`, expected a whole number"),
            (#"{"r": {"bandwidth": {"size": 1, "refill_time": 18446744073710}}}"#, "'refill_time' is 18446744073710; expected 0 to 18446744073709"),
            (#"{"r": {"bandwidth": {"size": 1, "refill_time": 1, "rate": 5}}}"#, "unknown field `rate`"),
            (#"{"r": {"bw": {"size": 1, "refill_time": 1}}}"#, "unknown field `bw`"),
            (#"{"r": {"ops": 5}}"#, "expected a JSON object"),
            (#"{"r": []}"#, "expected a JSON object"),
        ]
        for (body, message) in refused {
            #expect(throws: APIError.self, "\(body)") { try RateLimiterJSON.configuration(fields(body), key: "r") }
            do {
                _ = try RateLimiterJSON.configuration(fields(body), key: "r")
            } catch let error as APIError {
                #expect(error.message.contains(message), "\(body): \(error.message)")
            } catch {
                Issue.record("\(body): \(error)")
            }
        }
    }

    @Test("PATCH semantics: a given bucket is replaced (size 0 removes it), an absent one is unchanged")
    func updates() throws {
        let bucket = TokenBucketConfiguration(size: 5000, refillTimeMilliseconds: 100)
        #expect(try RateLimiterJSON.update(fields(#"{"r": {"bandwidth": {"size": 5000, "refill_time": 100}}}"#), key: "r")
            == RateLimiterUpdate(bandwidth: .replace(bucket), operations: .unchanged))
        #expect(try RateLimiterJSON.update(fields(#"{"r": {}}"#), key: "r") == .none)
        #expect(try RateLimiterJSON.update(fields(#"{}"#), key: "r") == .none)
        #expect(try RateLimiterJSON.update(fields(#"{"r": {"ops": {"size": 0, "refill_time": 0}}}"#), key: "r")
            == RateLimiterUpdate(operations: .replace(TokenBucketConfiguration(size: 0, refillTimeMilliseconds: 0))))
    }

    @Test("GET /vm/config shows rate limiters and the rest of Firecracker's drive and interface layout, nulls included")
    func vmConfig() throws {
        let controller = try makeController()
        let paths = try Self.images(["r", "b", "n"])
        defer { for path in paths { unlink(path) } }
        #expect(send(controller, "PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "\#(paths[0])", "is_root_device": true, "is_read_only": true}"#).status == 204)
        #expect(send(controller, "PUT", "/drives/bwops", #"{"drive_id": "bwops", "path_on_host": "\#(paths[1])", "is_root_device": false, "is_read_only": false, "cache_type": "Writeback", "rate_limiter": {"bandwidth": {"size": 1000000, "refill_time": 100}, "ops": {"size": 1, "one_time_burst": 10, "refill_time": 100}}}"#).status == 204)
        #expect(send(controller, "PUT", "/drives/nada", #"{"drive_id": "nada", "path_on_host": "\#(paths[2])", "is_root_device": false, "is_read_only": false, "rate_limiter": {}}"#).status == 204)
        #expect(send(controller, "PUT", "/network-interfaces/3", #"{"iface_id": "3", "host_dev_name": "tap3", "guest_mac": "06:00:00:00:00:03", "rx_rate_limiter": {"bandwidth": {"size": 1000000, "refill_time": 100}, "ops": {"size": 1, "refill_time": 100}}, "tx_rate_limiter": {"bandwidth": {"size": 1000000, "refill_time": 100}}}"#).status == 204)
        let config = json(send(controller, "GET", "/vm/config", ""))
        guard case let .array(drives)? = config?["drives"], case let .array(interfaces)? = config?["network-interfaces"] else {
            Issue.record("no drives or interfaces in /vm/config")
            return
        }
        let expectedRoot: JSONValue = try JSONParser.parse(Array(#"{"drive_id":"rootfs","partuuid":null,"is_root_device":true,"cache_type":"Unsafe","is_read_only":true,"path_on_host":"\#(paths[0])","rate_limiter":null,"io_engine":"Sync","socket":null}"#.utf8))
        #expect(drives.first == expectedRoot)
        let expectedLimited: JSONValue = try JSONParser.parse(Array(#"{"drive_id":"bwops","partuuid":null,"is_root_device":false,"cache_type":"Writeback","is_read_only":false,"path_on_host":"\#(paths[1])","rate_limiter":{"bandwidth":{"size":1000000,"one_time_burst":null,"refill_time":100},"ops":{"size":1,"one_time_burst":10,"refill_time":100}},"io_engine":"Sync","socket":null}"#.utf8))
        #expect(drives.dropFirst().first == expectedLimited)
        #expect(drives.last?["rate_limiter"] == .null, "{} is shown as null")
        let expectedInterface: JSONValue = try JSONParser.parse(Array(#"{"iface_id":"3","host_dev_name":"tap3","guest_mac":"06:00:00:00:00:03","mtu":null,"rx_rate_limiter":{"bandwidth":{"size":1000000,"one_time_burst":null,"refill_time":100},"ops":{"size":1,"one_time_burst":null,"refill_time":100}},"tx_rate_limiter":{"bandwidth":{"size":1000000,"one_time_burst":null,"refill_time":100},"ops":null}}"#.utf8))
        #expect(interfaces.first == expectedInterface)

        // The limiters reach the VM configuration.
        var instance = InstanceConfiguration()
        instance.bootSource = BootSource(kernelImagePath: "/k")
        try instance.putDrive(DriveConfiguration(driveID: "d", pathOnHost: "/d", rateLimiter: RateLimiterConfiguration(
            operations: TokenBucketConfiguration(size: 1, refillTimeMilliseconds: 100))))
        try instance.putNetworkInterface(NetworkInterfaceConfiguration(interfaceID: "n", hostDeviceName: "tap0",
            transmitRateLimiter: RateLimiterConfiguration(bandwidth: TokenBucketConfiguration(size: 9, refillTimeMilliseconds: 9))))
        let built = try instance.vmConfiguration()
        #expect(built.disks.first?.rateLimiter.operations?.size == 1)
        #expect(built.disks.first?.serialFromImage == true)
        #expect(built.networkInterfaces.first?.transmitRateLimiter.bandwidth?.size == 9)
        #expect(built.networkInterfaces.first?.receiveRateLimiter.isUnlimited == true)
    }

    @Test("The config file takes rate limiters on drives and interfaces")
    func configFile() throws {
        let file = #"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false, "rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}], "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "rx_rate_limiter": {}, "tx_rate_limiter": {"bandwidth": {"size": 100, "one_time_burst": 5, "refill_time": 10}}}]}"#
        let parsed = try InstanceConfiguration.parseFirecrackerFile(Array(file.utf8), base: VMConfiguration(kernelPath: "", serial: .none))
        #expect(parsed.drives.first?.rateLimiter.operations == TokenBucketConfiguration(size: 10, refillTimeMilliseconds: 1000))
        #expect(parsed.networkInterfaces.first?.transmitRateLimiter.bandwidth == TokenBucketConfiguration(size: 100, oneTimeBurst: 5, refillTimeMilliseconds: 10))
        #expect(parsed.networkInterfaces.first?.receiveRateLimiter.isUnlimited == true)
        let bad = #"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "r", "path_on_host": "/r", "is_root_device": true, "rate_limiter": {"ops": {"size": 10}}}]}"#
        #expect(throws: APIError.self) { try InstanceConfiguration.parseFirecrackerFile(Array(bad.utf8), base: VMConfiguration(kernelPath: "", serial: .none)) }
    }

    @Test("PATCH of drives and interfaces before InstanceStart: Firecracker's refusal, nothing changed; bad bodies are 400 first")
    func patchBeforeBoot() throws {
        let controller = try makeController()
        let paths = try Self.images(["s"])
        defer { unlink(paths[0]) }
        #expect(send(controller, "PUT", "/drives/scratch", #"{"drive_id": "scratch", "path_on_host": "\#(paths[0])", "is_root_device": false}"#).status == 204)
        #expect(send(controller, "PUT", "/network-interfaces/1", #"{"iface_id": "1", "host_dev_name": "tap1"}"#).status == 204)
        for (path, body) in [("/drives/scratch", #"{"drive_id": "scratch", "path_on_host": "foo.bar"}"#),
                             ("/drives/scratch", #"{"drive_id": "scratch", "rate_limiter": {"ops": {"size": 1, "refill_time": 100}}}"#),
                             ("/network-interfaces/1", #"{"iface_id": "1"}"#),
                             ("/network-interfaces/1", #"{"iface_id": "1", "tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#)] {
            let response = send(controller, "PATCH", path, body)
            #expect(response.status == 400 && fault(response) == "The requested operation is not supported before starting the microVM.", "\(path) \(body)")
        }
        // Fields Firecracker's PartialDrive / PartialNetworkInterface lack are unknown.
        for (path, body, field) in [("/drives/scratch", #"{"drive_id": "scratch", "is_read_only": true}"#, "is_read_only"),
                                    ("/drives/scratch", #"{"drive_id": "scratch", "io_engine": "Sync"}"#, "io_engine"),
                                    ("/drives/scratch", #"{"drive_id": "scratch", "is_root_device": false}"#, "is_root_device"),
                                    ("/network-interfaces/1", #"{"iface_id": "1", "host_dev_name": "tap9"}"#, "host_dev_name")] {
            let response = send(controller, "PATCH", path, body)
            #expect(response.status == 400 && fault(response).contains("unknown field `\(field)`"), "\(body): \(fault(response))")
        }
        let mismatch = send(controller, "PATCH", "/drives/scratch", #"{"drive_id": "other", "path_on_host": "/x"}"#)
        #expect(mismatch.status == 400 && fault(mismatch).contains("differs from the id"))
        let empty = send(controller, "PATCH", "/drives/scratch", #"{"drive_id": "scratch"}"#)
        #expect(empty.status == 400 && fault(empty).contains("nothing to change"))
        let config = json(send(controller, "GET", "/vm/config", ""))
        guard case let .array(drives)? = config?["drives"] else {
            Issue.record("no drives")
            return
        }
        #expect(drives.first?["path_on_host"]?.stringValue == paths[0])
    }

    @Test("Drive and interface ids: Firecracker's (letters and digits of any script, '_', any length), plus '-' and '.'")
    func identifiers() throws {
        for good in ["rootfs", "drive_1", "Ünïcode_ß", "٣", String(repeating: "x", count: 300), "a-b.c"] {
            #expect(throws: Never.self, "\(good)") { try InstanceConfiguration.checkID(good, what: "drive") }
        }
        for bad in ["", "a b", "a/b", "a%2Fb", "x\u{0}", "semi;colon"] {
            #expect(throws: APIError.self, "\(bad)") { try InstanceConfiguration.checkID(bad, what: "drive") }
        }
    }
}
