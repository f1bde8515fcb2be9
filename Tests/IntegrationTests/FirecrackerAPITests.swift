import Foundation
import Glibc
import Testing

/// Replays what Firecracker's own API integration tests assert
/// (tests/integration_tests/functional/test_api.py, test_logging.py,
/// test_cmd_line_parameters.py, test_metrics.py) against a real swiftlet-vmm
/// process: status codes, error wording clients match on, refusals before and
/// after boot, `GET /vm/config` with Firecracker's defaults and nulls, the
/// version, the logger's lines and the metrics layout. The guest is the kit's
/// `idle` program.
@Suite("Firecracker's API rules (swiftlet-vmm processes)", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct FirecrackerAPITests {
    typealias VMM = ControlAPIProcessTests.VMMProcess

    static let notSupportedAfterStart = "The requested operation is not supported after starting the microVM."
    static let notSupportedBeforeStart = "The requested operation is not supported before starting the microVM."

    static func json(_ text: String) -> [String: Any] { ControlAPIProcessTests.json(text) }

    static func fault(_ response: UnixHTTP.Response) -> String {
        json(response.body)["fault_message"] as? String ?? "(no fault_message in \(response.body))"
    }

    /// A scratch file (a drive image) that is removed with the test's directory.
    static func image(_ name: String, size: Int = 1 << 20) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-fcapi-\(getpid())-\(name)").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(count: size))
        return path
    }

    /// Firecracker's `basic_config`: 2 vCPUs, 256 MiB, a read-write root drive.
    static func basicConfig(_ vm: VMM, rootfs: String, bootArgs: String? = nil) throws {
        let kernel = try KitGuest.program("idle")
        let args = bootArgs.map { #", "boot_args": "\#($0)""# } ?? ""
        #expect(try vm.request("PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"\#(args)}"#).status == 204)
        #expect(try vm.request("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256}"#).status == 204)
        #expect(try vm.request("PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "\#(rootfs)", "is_root_device": true, "is_read_only": false}"#).status == 204)
    }

    @Test("test_api_put_update_pre_boot: files are opened when PUT, one root drive, machine-config members round-trip")
    func putUpdatePreBoot() throws {
        let vm = try VMM([], name: "preboot")
        let rootfs = Self.image("preboot-root"), scratch = Self.image("preboot-scratch")
        defer { unlink(rootfs); unlink(scratch) }
        try Self.basicConfig(vm, rootfs: rootfs)
        #expect(try vm.request("PUT", "/drives/scratch", #"{"drive_id": "scratch", "path_on_host": "\#(scratch)", "is_root_device": false, "is_read_only": false, "io_engine": "Sync"}"#).status == 204)

        let badKernel = try vm.request("PUT", "/boot-source", #"{"kernel_image_path": "foo.bar"}"#)
        #expect(badKernel.status == 400 && Self.fault(badKernel).contains("The kernel file cannot be opened: No such file or directory (os error 2)"), "\(badKernel.body)")
        let badDrive = try vm.request("PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "foo.bar", "is_read_only": true, "is_root_device": true}"#)
        #expect(badDrive.status == 400 && Self.fault(badDrive).contains("No such file or directory"), "\(badDrive.body)")
        let secondRoot = try vm.request("PUT", "/drives/scratch", #"{"drive_id": "scratch", "path_on_host": "\#(scratch)", "is_read_only": false, "is_root_device": true}"#)
        #expect(secondRoot.status == 400 && Self.fault(secondRoot).contains("A root block device already exists"), "\(secondRoot.body)")

        let put = try vm.request("PUT", "/machine-config", #"{"vcpu_count": 4, "smt": true, "mem_size_mib": 256, "track_dirty_pages": true, "cpu_template": "C3"}"#)
        #expect(put.status == 204 && put.head.lowercased().contains("deprecation: true"), "\(put.head)")
        let machine = Self.json(try vm.request("GET", "/machine-config").body)
        #expect(machine["vcpu_count"] as? Int == 4 && machine["smt"] as? Bool == true && machine["mem_size_mib"] as? Int == 256)
        #expect(machine["cpu_template"] as? String == "C3" && machine["track_dirty_pages"] as? Bool == true)
        let log = (try? String(contentsOfFile: vm.apiLog, encoding: .utf8)) ?? ""
        #expect(log.contains("PUT /machine-config: cpu_template field is deprecated."), "\(log.suffix(1000))")
    }

    @Test("test_net_api_put_update_pre_boot: a MAC or host device used twice is refused in Firecracker's words")
    func netPreBoot() throws {
        let vm = try VMM([], name: "net")
        #expect(try vm.request("PUT", "/network-interfaces/1", #"{"iface_id": "1", "guest_mac": "06:00:00:00:00:01", "host_dev_name": "fcapitap1"}"#).status == 204)
        #expect(try vm.request("PUT", "/network-interfaces/2", #"{"iface_id": "2", "guest_mac": "07:00:00:00:00:01", "host_dev_name": "fcapitap2"}"#).status == 204)
        let mac = try vm.request("PUT", "/network-interfaces/2", #"{"iface_id": "2", "host_dev_name": "fcapitap2", "guest_mac": "06:00:00:00:00:01"}"#)
        #expect(Self.fault(mac).contains("The MAC address is already in use: 06:00:00:00:00:01"), "\(mac.body)")
        #expect(try vm.request("PUT", "/network-interfaces/2", #"{"iface_id": "2", "host_dev_name": "fcapitap2", "guest_mac": "08:00:00:00:00:01"}"#).status == 204)
        let name = try vm.request("PUT", "/network-interfaces/1", #"{"iface_id": "1", "host_dev_name": "fcapitap2", "guest_mac": "06:00:00:00:00:01"}"#)
        #expect(Self.fault(name).contains("Could not create the network device"), "\(name.body)")
    }

    @Test("test_api_machine_config: serde's words for missing and mistyped members, smt defaults to false")
    func machineConfig() throws {
        let vm = try VMM([], name: "mc")
        for body in [#"{"vcpu_count": "-2"}"#, #"{"smt": "random_string"}"#, #"{"cpu_template": "random_string", "vcpu_count": 1, "mem_size_mib": 128}"#,
                     #"{"mem_size_mib": "-2", "vcpu_count": 1}"#, #"{"mem_size_mib": 18446744073709551616, "vcpu_count": 1}"#] {
            #expect(try vm.request("PUT", "/machine-config", body).status == 400, "\(body)")
        }
        #expect(try vm.request("PATCH", "/machine-config", #"{"track_dirty_pages": true}"#).status == 204)
        #expect(Self.fault(try vm.request("PUT", "/machine-config", #"{"mem_size_mib": 128}"#)).contains("missing field `vcpu_count`"))
        #expect(Self.fault(try vm.request("PUT", "/machine-config", #"{"vcpu_count": 2}"#)).contains("missing field `mem_size_mib`"))
        #expect(try vm.request("PUT", "/machine-config", #"{"mem_size_mib": 128, "vcpu_count": 1}"#).status == 204)
        #expect(Self.json(try vm.request("GET", "/machine-config").body)["smt"] as? Bool == false)
        #expect(try vm.request("PATCH", "/machine-config", #"{"smt": true}"#).status == 204, "x86: smt may be enabled")
    }

    @Test("test_api_patch_pre_boot and test_api_put_update_post_boot: what each state refuses, word for word")
    func refusalsAroundBoot() throws {
        let vm = try VMM([], name: "refusals")
        let rootfs = Self.image("refusals-root")
        defer { unlink(rootfs) }
        try Self.basicConfig(vm, rootfs: rootfs)
        #expect(try vm.request("PUT", "/network-interfaces/1", #"{"iface_id": "1", "host_dev_name": "fcapirtap1", "guest_mac": "06:00:00:00:00:01"}"#).status == 204)

        #expect(Self.fault(try vm.request("PATCH", "/boot-source", #"{"kernel_image_path": "otherfile"}"#)).contains("Invalid request method"))
        #expect(try vm.request("PATCH", "/machine-config", #"{"vcpu_count": 4}"#).status == 204)
        #expect(Self.json(try vm.request("GET", "/machine-config").body)["vcpu_count"] as? Int == 4)
        #expect(Self.fault(try vm.request("PATCH", "/logger", #"{"level": "Error"}"#)).contains("Invalid request method"))
        #expect(Self.fault(try vm.request("PATCH", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "foo.bar"}"#)) == Self.notSupportedBeforeStart)
        #expect(Self.fault(try vm.request("PATCH", "/network-interfaces/1", #"{"iface_id": "1"}"#)) == Self.notSupportedBeforeStart)
        #expect(Self.fault(try vm.request("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#)) == Self.notSupportedBeforeStart)
        #expect(Self.fault(try vm.request("PATCH", "/vm", #"{"state": "Paused"}"#)) == Self.notSupportedBeforeStart)

        #expect(try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(Self.json(try vm.request("GET", "/").body)["state"] as? String == "Running")
        let kernel = try KitGuest.program("idle")
        for (method, path, body) in [
            ("PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#),
            ("PATCH", "/machine-config", #"{"vcpu_count": 4}"#),
            ("PUT", "/machine-config", #"{"vcpu_count": 4, "mem_size_mib": 128}"#),
            ("PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "\#(rootfs)", "is_root_device": true}"#),
            ("PUT", "/logger", #"{"level": "Info"}"#),
            ("PUT", "/metrics", #"{"metrics_path": "/tmp/unused"}"#),
            ("PUT", "/entropy", "{}"),
            ("PUT", "/actions", #"{"action_type": "InstanceStart"}"#),
        ] {
            let response = try vm.request(method, path, body)
            #expect(response.status == 400 && Self.fault(response) == Self.notSupportedAfterStart, "\(method) \(path): \(response.body)")
        }
        #expect(Self.fault(try vm.request("PATCH", "/boot-source", #"{"kernel_image_path": "otherfile"}"#)).contains("Invalid request method"))
        #expect(Self.fault(try vm.request("PATCH", "/logger", #"{"level": "Error"}"#)).contains("Invalid request method"))
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0)
    }

    @Test("test_api_version: GET /version before and after boot, a semver equal to --version's")
    func version() throws {
        let vm = try VMM([], name: "version")
        let before = try vm.request("GET", "/version")
        #expect(before.status == 200)
        let version = Self.json(before.body)["firecracker_version"] as? String ?? ""
        #expect(version.split(separator: ".").count == 3 && version.split(separator: ".").allSatisfy { Int($0) != nil }, "\(version)")
        let binary = try ProcessTests.run("swiftlet-vmm", ["--version"])
        let firstLine = binary.stdout.split(separator: "\n").first.map(String.init) ?? ""
        // Kata's check: the second word of the first line, without its "v".
        #expect(firstLine.split(separator: " ").dropFirst().first.map { String($0.dropFirst()) } == version, "\(firstLine)")
        let rootfs = Self.image("version-root")
        defer { unlink(rootfs) }
        try Self.basicConfig(vm, rootfs: rootfs)
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(try vm.request("GET", "/version").body == before.body)
    }

    @Test("test_get_full_config: every section, Firecracker's defaults and explicit nulls, the same after boot")
    func fullConfig() throws {
        let vm = try VMM([], name: "full")
        let empty = Self.json(try vm.request("GET", "/vm/config").body)
        let sections = ["balloon", "drives", "boot-source", "cpu-config", "logger", "machine-config", "metrics", "mmds-config",
                        "network-interfaces", "vsock", "entropy", "pmem", "memory-hotplug"]
        #expect(Set(empty.keys) == Set(sections), "\(empty.keys.sorted())")
        for section in ["balloon", "cpu-config", "logger", "metrics", "entropy", "memory-hotplug"] {
            #expect(empty[section] is NSNull, "\(section): \(String(describing: empty[section]))")
        }
        let unset = empty["boot-source"] as? [String: Any]
        #expect(unset?["kernel_image_path"] as? String == "" && unset?["initrd_path"] is NSNull && unset?["boot_args"] is NSNull)
        let defaults = empty["machine-config"] as? [String: Any]
        #expect(defaults?["vcpu_count"] as? Int == 1 && defaults?["mem_size_mib"] as? Int == 128 && defaults?["smt"] as? Bool == false)
        #expect(defaults?["track_dirty_pages"] as? Bool == false && defaults?["huge_pages"] as? String == "None" && defaults?["cpu_template"] == nil)

        let rootfs = Self.image("full-root")
        defer { unlink(rootfs) }
        try Self.basicConfig(vm, rootfs: rootfs, bootArgs: "")
        #expect(try vm.request("PUT", "/network-interfaces/1", #"{"iface_id": "1", "guest_mac": "06:00:00:00:00:01", "host_dev_name": "fcapiftap1"}"#).status == 204)
        let before = try vm.request("GET", "/vm/config").body
        let config = Self.json(before)
        let boot = config["boot-source"] as? [String: Any]
        #expect(boot?["boot_args"] as? String == "" && boot?["initrd_path"] is NSNull)
        let drive = (config["drives"] as? [[String: Any]])?.first ?? [:]
        #expect(drive["drive_id"] as? String == "rootfs" && drive["partuuid"] is NSNull && drive["is_root_device"] as? Bool == true)
        #expect(drive["cache_type"] as? String == "Unsafe" && drive["is_read_only"] as? Bool == false && drive["path_on_host"] as? String == rootfs)
        #expect(drive["rate_limiter"] is NSNull && drive["io_engine"] as? String == "Sync" && drive["socket"] is NSNull)
        let interface = (config["network-interfaces"] as? [[String: Any]])?.first ?? [:]
        #expect(interface["iface_id"] as? String == "1" && interface["guest_mac"] as? String == "06:00:00:00:00:01")
        #expect(interface["mtu"] is NSNull && interface["rx_rate_limiter"] is NSNull && interface["tx_rate_limiter"] is NSNull)
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(try vm.request("GET", "/vm/config").body == before, "the same after boot")
    }

    @Test("test_logging and test_metrics: request lines, errors, Firecracker's metrics layout on a FIFO, set once")
    func loggerAndMetrics() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-fcapi-lm-\(getpid())").path
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fifo = directory + "/metrics.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        // A reader holds the FIFO open, as Firecracker's users do; the VMM opens it O_RDWR|O_NONBLOCK.
        let reader = open(fifo, O_RDONLY | O_NONBLOCK)
        defer { close(reader) }
        let vm = try VMM(["--metrics-path", fifo, "--level", "Debug", "--show-level", "--show-log-origin", "--id", "fcapi-log"], name: "logmetrics")
        let again = try vm.request("PUT", "/metrics", #"{"metrics_path": "\#(directory)/other"}"#)
        #expect(Self.fault(again).contains("Reinitialization of metrics not allowed."), "\(again.body)")
        #expect(try vm.request("PATCH", "/machine-config", #"{"vcpu_count": 1}"#).status == 204)
        _ = try vm.request("GET", "/machine-config")
        let bad = try vm.request("PUT", "/boot-source", #"{"kernel_image_path": "inexistent_path"}"#)
        #expect(Self.fault(bad) == "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)")
        let rootfs = Self.image("lm-root")
        defer { unlink(rootfs) }
        try Self.basicConfig(vm, rootfs: rootfs)
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(vm.waitForSerial { $0.contains("KIT idle tick 2") })
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#).status == 204)

        let log = (try? String(contentsOfFile: vm.apiLog, encoding: .utf8)) ?? ""
        #expect(log.contains(#"The API server received a Patch request on "/machine-config" with body"#), "\(log.suffix(2000))")
        #expect(log.contains(#"The API server received a Get request on "/machine-config"."#))
        #expect(log.contains("Received Error. Status code: 400 Bad Request. Message: Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"))
        // YYYY-MM-DDTHH:MM:SS.NNNNNNNNN [ID:THREAD:LEVEL:FILE:LINE] message
        let line = log.split(separator: "\n").first { $0.contains("received a Patch request") }.map(String.init) ?? ""
        #expect(line.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[fcapi-log:api:INFO:ControlAPI/[^:]+\.swift:\d+\] "#, options: .regularExpression) != nil, "\(line)")

        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        let count = read(reader, &bytes, bytes.count)
        let lines = count > 0 ? String(decoding: bytes[..<count], as: UTF8.self).split(separator: "\n") : []
        let metrics = Self.json(String(lines.last ?? ""))
        for group in ["api_server", "balloon", "block", "deprecated_api", "get_api_requests", "i8042", "latencies_us", "logger", "mmds", "net",
                      "patch_api_requests", "put_api_requests", "seccomp", "vcpu", "vmm", "uart", "signals", "vsock", "entropy",
                      "interrupts", "pmem", "memory_hotplug"] {
            #expect(metrics[group] is [String: Any], "metrics group \(group) missing: \(metrics.keys.sorted())")
        }
        let now = Date().timeIntervalSince1970 * 1000
        #expect(abs((metrics["utc_timestamp_ms"] as? Double ?? 0) - now) < 5000, "a UTC timestamp")
        let put = metrics["put_api_requests"] as? [String: Any]
        #expect((put?["boot_source_fails"] as? Int ?? 0) >= 1 && (put?["actions_count"] as? Int ?? 0) >= 1, "\(String(describing: put))")
        #expect(((metrics["vcpu"] as? [String: Any])?["exit_io_out"] as? Int ?? 0) > 0, "the guest's port writes are counted")
        #expect(((metrics["block"] as? [String: Any])?["read_agg"] as? [String: Any])?["min_us"] != nil)
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0)
    }

    @Test("--seccomp-filter: Firecracker's compiled filters are installed and the guest runs; a malformed file is one line and status 1")
    func seccompFilter() throws {
        func u64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
        let allow = UInt64(0x06) | UInt64(0x7fff_0000) << 32  // BPF_RET|BPF_K SECCOMP_RET_ALLOW
        var file = u64(3)
        for name in ["vmm", "api", "vcpu"] { file += u64(UInt64(name.utf8.count)) + Array(name.utf8) + u64(1) + u64(allow) }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-fcapi-\(getpid()).bpf").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(file))
        defer { unlink(path) }
        let vm = try VMM(["--kernel", try KitGuest.program("idle"), "--seccomp-filter", path], name: "seccomp")
        #expect(vm.waitForSerial { $0.contains("KIT idle tick 3") }, "the guest runs under the filters")
        // Every thread (main, api, vcpu) is in filter mode (2).
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(vm.process.processIdentifier)/task")) ?? []
        #expect(tasks.count >= 3)
        for task in tasks {
            let status = (try? String(contentsOfFile: "/proc/\(vm.process.processIdentifier)/task/\(task)/status", encoding: .utf8)) ?? ""
            let name = status.split(separator: "\n").first ?? ""
            #expect(status.contains("Seccomp:\t2"), "\(name): not filtered")
        }
        #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
        #expect(vm.waitForExit() == 0)

        let hello = try KitGuest.program("hello")
        _ = FileManager.default.createFile(atPath: path, contents: Data(file.dropLast(5)))
        let bad = try ProcessTests.run("swiftlet-vmm", ["--kernel", hello, "--seccomp-filter", path])
        #expect(bad.status == 1 && bad.stderr.contains("invalid seccomp-filter") && bad.stderr.split(separator: "\n").count == 1, "\(bad.stderr)")
    }

    @Test("--config-file with --no-api boots without a socket; its logger and metrics sections apply; metrics get a line at exit")
    func configFileNoAPI() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-fcapi-noapi-\(getpid())").path
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let config = #"""
            {"boot-source": {"kernel_image_path": "\#(try KitGuest.program("hello"))"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
             "logger": {"log_path": "\#(directory)/log", "level": "Info", "show_level": true},
             "metrics": {"metrics_path": "\#(directory)/metrics", "emit_id": true, "properties": {"team": "swiftlet"}},
             "balloon": null, "pmem": []}
            """#
        _ = FileManager.default.createFile(atPath: directory + "/vm.json", contents: Data(config.utf8))
        let run = try ProcessTests.run("swiftlet-vmm", ["--config-file", directory + "/vm.json", "--no-api", "--id", "noapi", "--serial", "none"])
        #expect(run.status == 0, "\(run.stderr)")
        let log = (try? String(contentsOfFile: directory + "/log", encoding: .utf8)) ?? ""
        #expect(log.contains("[noapi:") && log.contains(":INFO] Swiftlet exiting successfully. exit_code=0"), "\(log)")
        let metrics = (try? String(contentsOfFile: directory + "/metrics", encoding: .utf8)) ?? ""
        let last = Self.json(String(metrics.split(separator: "\n").last ?? ""))
        #expect(last["id"] as? String == "noapi" && (last["properties"] as? [String: Any])?["team"] as? String == "swiftlet", "\(metrics)")
        #expect(((last["vcpu"] as? [String: Any])?["exit_io_out"] as? Int ?? 0) > 0, "the run's exits are in the last line")

        let bad = try ProcessTests.run("swiftlet-vmm", ["--config-file", directory + "/vm.json", "--no-api", "--api-sock", directory + "/s"])
        #expect(bad.status == 1 && bad.stderr.contains("--no-api"), "\(bad.stderr)")
    }

    @Test("Firecracker's process flags with --kernel: --metrics-path and --log-path work without an API socket")
    func processFlagsWithKernel() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-fcapi-kflags-\(getpid())").path
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let run = try ProcessTests.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--serial", "none",
                                                        "--metrics-path", directory + "/m", "--log-path", directory + "/l", "--boot-timer"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(((try? String(contentsOfFile: directory + "/m", encoding: .utf8)) ?? "").contains("\"utc_timestamp_ms\""))
        #expect(((try? String(contentsOfFile: directory + "/l", encoding: .utf8)) ?? "").contains("Successfully built the microVM"))
    }

    @Test("huge_pages Transparent advises guest RAM MADV_HUGEPAGE; None does not")
    func transparentHugePages() throws {
        for (mode, advised) in [("Transparent", true), ("None", false)] {
            let vm = try VMM([], name: "thp-\(mode)")
            #expect(try vm.request("PUT", "/boot-source", #"{"kernel_image_path": "\#(try KitGuest.program("idle"))"}"#).status == 204)
            #expect(try vm.request("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "\#(mode)"}"#).status == 204)
            #expect(try vm.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
            #expect(vm.waitForSerial { $0.contains("KIT idle tick 1") })
            // The guest RAM mapping (64 MiB) carries "hg" in its VmFlags when advised.
            // /proc files report size 0: read them to the end.
            let smaps = FileHandle(forReadingAtPath: "/proc/\(vm.process.processIdentifier)/smaps")
                .map { String(decoding: $0.readDataToEndOfFile(), as: UTF8.self) } ?? ""
            var flagsOfGuestRAM: String?
            var currentSize = 0
            for line in smaps.split(separator: "\n") {
                if line.hasPrefix("Size:") { currentSize = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0 }
                if line.hasPrefix("VmFlags:"), currentSize == 64 * 1024 { flagsOfGuestRAM = String(line) }
            }
            #expect(flagsOfGuestRAM != nil, "no 64 MiB mapping in smaps")
            #expect((flagsOfGuestRAM?.split(separator: " ").contains("hg") ?? false) == advised, "\(mode): \(flagsOfGuestRAM ?? "")")
            #expect(try vm.request("PUT", "/actions", #"{"action_type": "Stop"}"#).status == 204)
            #expect(vm.waitForExit() == 0)
        }
    }
}
