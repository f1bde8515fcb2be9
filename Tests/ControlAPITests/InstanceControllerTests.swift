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
            (#"{"vcpu_count": 2}"#, "missing field `mem_size_mib`"),
            (#"{"vcpu_count": 3, "mem_size_mib": 64, "smt": true}"#, "must be 1 or an even number if SMT is enabled"),
            (#"{"vcpu_count": 2, "mem_size_mib": 8}"#, "expected 16 to"),
            (#"{"vcpu_count": 2.5, "mem_size_mib": 64}"#, "expected a whole number"),
            (#"{"vcpu_count": 2, "mem_size_mib": 64, "cpu_template": "Z9"}"#, "unknown variant `Z9`"),
            (#"{"vcpu_count": 2, "mem_size_mib": 64, "huge_pages": "2M"}"#, "not supported"),
            (#"{"vcpu_count": 2, "mem_size_mib": 64, "smtx": true}"#, "unknown field `smtx`"),
        ]
        for (body, message) in refused {
            let response = send(controller, "PUT", "/machine-config", body)
            #expect(response.status == 400 && fault(response).contains(message), "\(body): \(fault(response))")
        }
        let after = json(send(controller, "GET", "/machine-config"))
        #expect(after?["vcpu_count"]?.integerValue == 4 && after?["mem_size_mib"]?.integerValue == 512, "refusals changed nothing")

        // Firecracker's optional members are kept and reported; PUT resets what it does not name.
        let template = send(controller, "PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256, "smt": true, "cpu_template": "T2", "track_dirty_pages": true, "huge_pages": "Transparent"}"#)
        #expect(template.status == 204 && template.headers.contains { $0.name == "Deprecation" }, "cpu_template is deprecated in Firecracker")
        let full = json(send(controller, "GET", "/machine-config"))
        #expect(full?["smt"] == .bool(true) && full?["cpu_template"]?.stringValue == "T2")
        #expect(full?["track_dirty_pages"] == .bool(true) && full?["huge_pages"]?.stringValue == "Transparent")
        #expect(send(controller, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128}"#).status == 204)
        let reset = json(send(controller, "GET", "/machine-config"))
        #expect(reset?["smt"] == .bool(false) && reset?["cpu_template"] == nil && reset?["huge_pages"]?.stringValue == "None")
    }

    @Test("drives and network interfaces are stored, checked, and listed in /vm/config")
    func devices() throws {
        let controller = try makeController()
        let image = "/tmp/swiftlet-unit-drive-\(getpid())"
        _ = try OwnedFileDescriptor.open(image, flags: O_RDWR | O_CREAT, mode: 0o600)
        defer { unlink(image) }
        #expect(send(controller, "PUT", "/drives/root", #"{"drive_id": "root", "path_on_host": "\#(image)", "is_root_device": true, "is_read_only": false}"#).status == 204)
        #expect(send(controller, "PUT", "/drives/data", #"{"drive_id": "data", "path_on_host": "\#(image)", "is_root_device": false, "cache_type": "Writeback", "io_engine": "Async"}"#).status == 204)
        let missing = send(controller, "PUT", "/drives/gone", #"{"drive_id": "gone", "path_on_host": "/no/such/image", "is_root_device": false}"#)
        #expect(missing.status == 400 && fault(missing).contains("No such file or directory (os error 2)"), "checked when PUT, as Firecracker")
        let secondRoot = send(controller, "PUT", "/drives/other", #"{"drive_id": "other", "path_on_host": "\#(image)", "is_root_device": true}"#)
        #expect(secondRoot.status == 400 && fault(secondRoot).contains("A root block device already exists"))
        let patch = send(controller, "PATCH", "/drives/data", #"{"drive_id": "data", "path_on_host": "\#(image)"}"#)
        #expect(patch.status == 400 && fault(patch) == APIError.notSupportedBeforeStart.message, "PATCH is for a running VM")
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
        #expect(drives.last?["cache_type"]?.stringValue == "Writeback" && drives.last?["io_engine"]?.stringValue == "Async")
        #expect(drives.first?["partuuid"] == .null && drives.first?["rate_limiter"] == .null && drives.first?["socket"] == .null)
        #expect(interfaces.first?["guest_mac"]?.stringValue == "06:00:ac:10:00:02")
    }

    @Test("PUT /serial sets where the guest's console goes; its rate limiter is refused")
    func serial() throws {
        let controller = try makeController()
        #expect(send(controller, "PUT", "/serial", #"{"serial_out_path": "/tmp/console.log"}"#).status == 204)
        #expect(send(controller, "PUT", "/serial", #"{"rate_limiter": {"size": 1, "refill_time": 1}}"#).status == 400)
        #expect(send(controller, "PUT", "/boot-source", #"{"kernel_image_path": "/etc/hostname"}"#).status == 204)
        #expect(try controller.state.withLock { try $0.configuration.vmConfiguration() }.serial == .file(path: "/tmp/console.log"))
    }

    @Test("PUT /entropy adds the virtio-rng before boot; /vm/config shows it as Firecracker does")
    func entropy() throws {
        let controller = try makeController()
        #expect(send(controller, "PUT", "/entropy", #"{"rate_limiter": 5}"#).status == 400)
        #expect(json(send(controller, "GET", "/vm/config"))?["entropy"] == .null)
        #expect(send(controller, "PUT", "/entropy", "{}").status == 204)
        #expect(json(send(controller, "GET", "/vm/config"))?["entropy"] == .object([("rate_limiter", .null)]))
        // bandsox sends a limiter: accepted and reported (not enforced; see docs/firecracker-compatibility.md).
        #expect(send(controller, "PUT", "/entropy", #"{"rate_limiter": {"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 1000}}}"#).status == 204)
        #expect(json(send(controller, "GET", "/vm/config"))?["entropy"]?["rate_limiter"]?["bandwidth"]?["size"]?.integerValue == 1048576)
        #expect(send(controller, "PUT", "/entropy", #"{"rate_limiter": {"bandwidth": {"size": 1}}}"#).status == 400, "refill_time is required")
    }

    @Test("out-of-order and impossible actions get 4xx and change nothing")
    func actions() throws {
        let controller = try makeController()
        let noBoot = send(controller, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(noBoot.status == 400 && fault(noBoot).contains("PUT /boot-source"))
        for action in ["Shutdown", "Reboot", "Stop", "SendCtrlAltDel", "FlushMetrics"] {
            let response = send(controller, "PUT", "/actions", #"{"action_type": "\#(action)"}"#)
            #expect(response.status == 400 && fault(response) == APIError.notSupportedBeforeStart.message, "\(action): \(fault(response))")
        }
        #expect(fault(send(controller, "PATCH", "/vm", #"{"state": "Paused"}"#)) == APIError.notSupportedBeforeStart.message)
        #expect(send(controller, "PATCH", "/vm", #"{"state": "Sleeping"}"#).status == 400)
        #expect(send(controller, "PUT", "/actions", #"{"action_type": "Stop", "timeout_ms": 5}"#).status == 400)

        let badKernel = send(controller, "PUT", "/boot-source", #"{"kernel_image_path": "/no/such/kernel", "boot_args": "console=ttyS0"}"#)
        #expect(fault(badKernel) == "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)", "checked when PUT")
        // A kernel that exists but cannot be loaded is InstanceStart's error.
        #expect(send(controller, "PUT", "/boot-source", #"{"kernel_image_path": "/etc/hostname"}"#).status == 204)
        let start = send(controller, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(start.status == 400 && fault(start).contains("/etc/hostname"), "\(fault(start))")
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
        #expect(send("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#) == 400, "only once the VM runs, as in Firecracker")
        // The metrics line written at the end (or by FlushMetrics) has Firecracker's layout.
        controller.flushMetrics()
        let metrics = (try? OwnedFileDescriptor.readWholeFile(directory + "/metrics")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let line = try? JSONParser.parse(Array(metrics.utf8.prefix { $0 != 0x0A }))
        #expect(line?["utc_timestamp_ms"]?.integerValue != nil, "\(metrics)")
        for group in FirecrackerMetricsLayout.groups {
            #expect(line?[group.name] != nil, "group \(group.name) missing")
        }
        #expect(line?["put_api_requests"]?["logger_count"]?.integerValue == 3 && line?["put_api_requests"]?["logger_fails"]?.integerValue == 2)
        #expect(line?["put_api_requests"]?["metrics_count"]?.integerValue == 2, "counters are what happened since the last line")
        #expect(line?["vcpu"]?["exit_io_in_agg"]?["min_us"]?.integerValue == 0)
        let log = (try? OwnedFileDescriptor.readWholeFile(directory + "/log")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        #expect(log.contains(#"[files:"#) && log.contains(":INFO] The API server received a Put request on \"/metrics\""), "\(log)")
        #expect(log.contains("Received Error. Status code: 400 Bad Request. Message: The requested operation is not supported before starting the microVM."), "\(log)")
    }
}

@Suite("Control API state around the end of a run")
struct RunEndStateTests {
    /// The package root is three levels above this file.
    static let idle = #filePath.split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
        + "/guest-kit/build/idle.elf"
    static var usable: Bool { access("/dev/kvm", R_OK | W_OK) == 0 && access(idle, R_OK) == 0 }

    @Test("once the guest has ended its run (a reboot with --on-reboot exit pending), GET / no longer says Running and a Reboot cannot turn it into an API reboot",
          .enabled(if: usable, "needs /dev/kvm and guest-kit/build/idle.elf"))
    func stoppedRunIsNotRunning() throws {
        var configuration = InstanceConfiguration(VMConfiguration(kernelPath: Self.idle, memorySize: 32 << 20, serial: .none, onReboot: .exit))
        configuration.machine.memorySizeMiB = 32
        let controller = try InstanceController(instanceID: "end", vmmVersion: "1", configuration: configuration)
        let machine = try controller.startNow()
        func state() -> String? {
            (try? JSONParser.parse(controller.handle(HTTPRequest(method: "GET", path: "/")).body))?["state"]?.stringValue
        }
        #expect(state() == "Running")
        // What a vCPU does when the guest resets the machine (the main thread has not seen it yet).
        #expect(machine.stop(.rebootRequested))
        #expect(state() == "Not started", "the run has ended: not Running")
        let reboot = controller.handle(HTTPRequest(method: "PUT", path: "/actions", body: Array(#"{"action_type": "Reboot"}"#.utf8)))
        #expect(reboot.status == 400, "refused: the VM is not running")
        #expect(controller.runEnded(.rebootRequested) == false, "the guest's reboot stands: --on-reboot exit exits")
        controller.finish()
    }
}

@Suite("The log")
struct APILogTests {
    @Test("text from a request cannot start a log line of its own")
    func oneLine() {
        #expect(APILog.oneLine("plain") == "plain")
        #expect(APILog.oneLine("a\nb\r\t\u{1}") == #"a\nb\r\t\u{1}"#)
    }

    @Test("levels parse as Firecracker's, case-insensitively, Warn and Warning alike")
    func levels() {
        #expect(APILog.Level(name: "warning") == .warn && APILog.Level(name: "WARN") == .warn && APILog.Level(name: "Off") == .off)
        #expect(APILog.Level(name: "loud") == nil)
        #expect(APILog.Level.debug > APILog.Level.info)
    }
}
