import Glibc
import HostSystem
import LeanJSON
import Testing
@testable import ControlAPI
@testable import VMM

@Suite("Control API handlers before boot")
struct InstanceControllerTests {
    /// A controller whose VM cannot be built (no KVM needed): InstanceStart
    /// reports the error.
    func makeController() throws -> InstanceController {
        try InstanceController(instanceID: "unit", vmmVersion: "0.1.0", configuration: InstanceConfiguration()) { (configuration) throws(VMMError) in
            throw .readFile(role: "kernel", path: configuration.kernelPath, cause: .init(call: "open", errno: .noEntry))
        }
    }

    func send(_ controller: InstanceController, _ method: String, _ path: String, _ body: String? = nil) -> HTTPResponse {
        controller.handle(HTTPRequest(method: method, path: path, body: Array((body ?? "").utf8)))
    }

    func json(_ response: HTTPResponse) -> JSONValue? { try? JSONParser.parse(response.body) }

    func fault(_ response: HTTPResponse) -> String { json(response)?["fault_message"]?.stringValue ?? "" }

    @Test("GET / describes the instance in Firecracker's shape")
    func describe() throws {
        let controller = try makeController()
        let info = json(send(controller, "GET", "/"))
        #expect(info?["id"]?.stringValue == "unit")
        #expect(info?["state"]?.stringValue == "Not started")
        #expect(info?["vmm_version"]?.stringValue == "0.1.0")
        #expect(info?["app_name"]?.stringValue == "swiftlet")
    }

    @Test("machine-config: PUT needs both counts, PATCH changes some, unsupported features are refused")
    func machineConfig() throws {
        let controller = try makeController()
        #expect(send(controller, "PUT", "/machine-config", #"{"vcpu_count": 4, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false, "cpu_template": "None", "huge_pages": "None"}"#).status == 204)
        #expect(send(controller, "PATCH", "/machine-config", #"{"mem_size_mib": 512}"#).status == 204)
        let config = json(send(controller, "GET", "/machine-config"))
        #expect(config?["vcpu_count"]?.integerValue == 4 && config?["mem_size_mib"]?.integerValue == 512)

        let refused = [
            (#"{"vcpu_count": 2}"#, "missing required field 'mem_size_mib'"),
            (#"{"vcpu_count": 2, "mem_size_mib": 64, "smt": true}"#, "'smt' true is not supported"),
            (#"{"vcpu_count": 2, "mem_size_mib": 8}"#, "expected 16 to"),
            (#"{"vcpu_count": 2.5, "mem_size_mib": 64}"#, "must be a whole number"),
            (#"{"vcpu_count": 2, "mem_size_mib": 64, "cpu_template": "T2"}"#, "'cpu_template'"),
        ]
        for (body, message) in refused {
            let response = send(controller, "PUT", "/machine-config", body)
            #expect(response.status == 400 && fault(response).contains(message), "\(body): \(fault(response))")
        }
        let after = json(send(controller, "GET", "/machine-config"))
        #expect(after?["vcpu_count"]?.integerValue == 4 && after?["mem_size_mib"]?.integerValue == 512, "refusals changed nothing")
    }

    @Test("drives and network interfaces are stored, checked, and listed in /vm/config")
    func devices() throws {
        let controller = try makeController()
        #expect(send(controller, "PUT", "/drives/root", #"{"drive_id": "root", "path_on_host": "/img/root.ext4", "is_root_device": true, "is_read_only": false}"#).status == 204)
        #expect(send(controller, "PUT", "/drives/data", #"{"drive_id": "data", "path_on_host": "/img/data", "is_root_device": false, "cache_type": "Unsafe", "io_engine": "Sync"}"#).status == 204)
        let secondRoot = send(controller, "PUT", "/drives/other", #"{"drive_id": "other", "path_on_host": "/x", "is_root_device": true}"#)
        #expect(secondRoot.status == 400 && fault(secondRoot).contains("already the root device"))
        // Firecracker refuses PATCH before InstanceStart (PUT the drive again instead).
        let early = send(controller, "PATCH", "/drives/data", #"{"drive_id": "data", "path_on_host": "/img/data2"}"#)
        #expect(early.status == 400 && fault(early) == "The requested operation is not supported before starting the microVM.")
        #expect(send(controller, "PUT", "/drives/data", #"{"drive_id": "data", "path_on_host": "/img/data2", "is_root_device": false}"#).status == 204)
        let badID = send(controller, "PUT", "/drives/a%2Fb", #"{"drive_id": "a%2Fb", "path_on_host": "/x", "is_root_device": false}"#)
        #expect(badID.status == 400 && fault(badID).contains("invalid"))

        #expect(send(controller, "PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}"#).status == 204)
        let sameTap = send(controller, "PUT", "/network-interfaces/eth1", #"{"iface_id": "eth1", "host_dev_name": "tap0"}"#)
        #expect(sameTap.status == 400 && fault(sameTap).contains("already used"))
        let longName = send(controller, "PUT", "/network-interfaces/eth1", #"{"iface_id": "eth1", "host_dev_name": "a-very-long-tap-name"}"#)
        #expect(longName.status == 400)

        let config = json(send(controller, "GET", "/vm/config"))
        guard case let .array(drives)? = config?["drives"], case let .array(interfaces)? = config?["network-interfaces"] else {
            Issue.record("no drives or interfaces in /vm/config")
            return
        }
        #expect(drives.map { $0["drive_id"]?.stringValue } == ["root", "data"])
        #expect(drives.last?["path_on_host"]?.stringValue == "/img/data2")
        #expect(interfaces.first?["guest_mac"]?.stringValue == "06:00:ac:10:00:02")
    }

    @Test("PUT /entropy adds the virtio-rng before boot, with an optional rate limiter")
    func entropy() throws {
        let controller = try makeController()
        #expect(send(controller, "PUT", "/entropy", #"{"rate_limiter": {"bandwidth": {"size": 1}}}"#).status == 400)
        #expect(json(send(controller, "GET", "/vm/config"))?["entropy"] == nil)
        #expect(send(controller, "PUT", "/entropy", "{}").status == 204)
        #expect(json(send(controller, "GET", "/vm/config"))?["entropy"] == .object([("rate_limiter", .null)]))
        #expect(send(controller, "PUT", "/entropy", #"{"rate_limiter": {"bandwidth": {"size": 1000000, "refill_time": 100}, "ops": {"size": 1, "refill_time": 100}}}"#).status == 204)
        let limiter = json(send(controller, "GET", "/vm/config"))?["entropy"]?["rate_limiter"]
        #expect(limiter?["bandwidth"]?["size"]?.integerValue == 1_000_000 && limiter?["ops"]?["refill_time"]?.integerValue == 100)
    }

    @Test("out-of-order and impossible actions get 4xx and change nothing")
    func actions() throws {
        let controller = try makeController()
        let noBoot = send(controller, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(noBoot.status == 409 && fault(noBoot).contains("PUT /boot-source"))
        for action in ["Shutdown", "Reboot", "Stop", "SendCtrlAltDel"] {
            let response = send(controller, "PUT", "/actions", #"{"action_type": "\#(action)"}"#)
            #expect(response.status == 409 && fault(response).contains("not running"), "\(action): \(fault(response))")
        }
        #expect(send(controller, "PATCH", "/vm", #"{"state": "Paused"}"#).status == 409)
        #expect(send(controller, "PATCH", "/vm", #"{"state": "Sleeping"}"#).status == 400)
        #expect(send(controller, "PUT", "/actions", #"{"action_type": "Stop", "timeout_ms": 5}"#).status == 400)
        #expect(send(controller, "PUT", "/actions", #"{"action_type": "FlushMetrics"}"#).status == 204)

        #expect(send(controller, "PUT", "/boot-source", #"{"kernel_image_path": "/no/such/kernel", "boot_args": "console=ttyS0"}"#).status == 204)
        let start = send(controller, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(start.status == 400 && fault(start).contains("/no/such/kernel"), "\(fault(start))")
        #expect(json(send(controller, "GET", "/"))?["state"]?.stringValue == "Not started")
        #expect(send(controller, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#).status == 204, "still configurable")
    }

    @Test("metrics before start report the configuration and no uptime")
    func metricsBeforeStart() throws {
        let controller = try makeController()
        let metrics = json(send(controller, "GET", "/metrics"))
        #expect(metrics?["state"]?.stringValue == "Not started")
        #expect(metrics?["uptime_ms"]?.integerValue == 0 && metrics?["boots"]?.integerValue == 0)
        #expect(metrics?["vcpu_count"]?.integerValue == 1 && metrics?["mem_size_mib"]?.integerValue == 128)
    }

    @Test("Firecracker config files parse; unknown sections and duplicate ids are refused")
    func configFile() throws {
        let base = VMConfiguration(kernelPath: "", serial: .none)
        let file = #"{"boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}, "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}], "network-interfaces": [], "logger": null}"#
        let parsed = try InstanceConfiguration.parseFirecrackerFile(Array(file.utf8), base: base)
        #expect(parsed.bootSource == BootSource(kernelImagePath: "/k", bootArgs: "console=ttyS0"))
        #expect(parsed.machine == MachineConfiguration(vcpuCount: 2, memorySizeMiB: 256))
        #expect(parsed.drives.map(\.driveID) == ["rootfs"] && parsed.base.serial == .none)

        #expect(throws: APIError.self) { try InstanceConfiguration.parseFirecrackerFile(Array(#"{"boot-source": {"kernel_image_path": "/k"}, "vsock": {}}"#.utf8), base: base) }
        #expect(throws: APIError.self) { try InstanceConfiguration.parseFirecrackerFile(Array(#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#.utf8), base: base) }
        let duplicate = #"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": false}, {"drive_id": "a", "path_on_host": "/b", "is_root_device": false}]}"#
        #expect(throws: APIError.self) { try InstanceConfiguration.parseFirecrackerFile(Array(duplicate.utf8), base: base) }
    }

    @Test("a VM configured through the API maps onto VMConfiguration; drives become disks, the root one on the command line")
    func vmConfiguration() throws {
        var configuration = InstanceConfiguration(base: VMConfiguration(kernelPath: "", serial: .none, onReboot: .restart))
        configuration.bootSource = BootSource(kernelImagePath: "/k", initrdPath: "/i", bootArgs: "quiet")
        configuration.machine = MachineConfiguration(vcpuCount: 2, memorySizeMiB: 64)
        let result = try configuration.vmConfiguration()
        #expect(result.kernelPath == "/k" && result.initrdPath == "/i" && result.commandLine == "quiet")
        #expect(result.cpuCount == 2 && result.memorySize == 64 << 20 && result.serial == .none && result.onReboot == .restart)
        try configuration.putDrive(DriveConfiguration(driveID: "data", pathOnHost: "/d", isReadOnly: true))
        try configuration.putDrive(DriveConfiguration(driveID: "root", pathOnHost: "/r", isRootDevice: true))
        let withDrives = try configuration.vmConfiguration()
        #expect(withDrives.disks == [DiskConfiguration(path: "/r", id: "root", serialFromImage: true),
                                     DiskConfiguration(path: "/d", id: "data", readOnly: true, serialFromImage: true)])
        #expect(withDrives.commandLine == "quiet root=/dev/vda rw")
        // The drive id is not the GET_ID serial (derived from the image), so any length Firecracker takes is fine.
        let long = String(repeating: "long_drive_id", count: 10)
        try configuration.putDrive(DriveConfiguration(driveID: long, pathOnHost: "/x"))
        #expect(try configuration.vmConfiguration().disks.last?.id == long)
    }

    @Test("interfaces from --net (with --kernel) are kept and listed next to the API's")
    func commandLineInterfaces() throws {
        var base = VMConfiguration(kernelPath: "/k", serial: .none)
        base.networkInterfaces = [try VMM.NetworkInterfaceConfiguration.make(id: "net0", tapName: "tap7", tapDescriptor: nil, mac: nil)]
        let configuration = InstanceConfiguration(base)
        #expect(try configuration.vmConfiguration().networkInterfaces.map(\.id) == ["net0"])
        #expect(configuration.json.contains(#""iface_id":"net0","host_dev_name":"tap7""#), "\(configuration.json)")
    }
}

@Suite("Control API logger and metrics files")
struct LoggerMetricsTests {
    @Test("PUT /logger redirects the log; PUT /metrics + FlushMetrics append the metrics document")
    func files() throws {
        let controller = try InstanceController(instanceID: "files", vmmVersion: "0", configuration: InstanceConfiguration())
        let directory = "/tmp/swiftlet-unit-files-\(getpid())"
        mkdir(directory, 0o700)
        defer {
            unlink(directory + "/log")
            unlink(directory + "/metrics")
            rmdir(directory)
        }
        func send(_ method: String, _ path: String, _ body: String) -> Int {
            controller.handle(HTTPRequest(method: method, path: path, body: Array(body.utf8))).status
        }
        #expect(send("PUT", "/logger", #"{"log_path": "\#(directory)/log", "level": "Info", "show_level": true}"#) == 204)
        #expect(send("PUT", "/logger", #"{"log_path": "/no/such/dir/log"}"#) == 400)
        #expect(send("PUT", "/logger", #"{"level": "Loud"}"#) == 400)
        #expect(send("PUT", "/metrics", #"{"metrics_path": "\#(directory)/metrics"}"#) == 204)
        #expect(send("PUT", "/metrics", #"{"metrics_path": "\#(directory)/metrics"}"#) == 400, "set once")
        #expect(send("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#) == 204)
        let metrics = (try? OwnedFileDescriptor.readWholeFile(directory + "/metrics")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        #expect(metrics.hasPrefix(#"{"id":"files""#) && metrics.hasSuffix("}\n"), "\(metrics)")
        let log = (try? OwnedFileDescriptor.readWholeFile(directory + "/log")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        #expect(log.contains("action FlushMetrics"), "\(log)")
    }
}
