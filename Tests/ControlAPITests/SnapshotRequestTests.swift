import Glibc
import GuestMemory
import KVM
import LeanJSON
import SnapshotFormat
import Synchronization
import Testing
@testable import ControlAPI
@testable import VMM

@Suite("Snapshot requests (PUT /snapshot/create, /snapshot/load)")
struct SnapshotRequestTests {
    func makeController(load: @escaping @Sendable (SavedMachine, String) throws(VMMError) -> VirtualMachine = { (_, path) throws(VMMError) in
        throw .readFile(role: "memory file", path: path, cause: .init(call: "open", errno: .noEntry))
    }) throws -> InstanceController {
        try InstanceController(instanceID: "unit", vmmVersion: "0.1.0", configuration: InstanceConfiguration(), makeMachine: { (configuration) throws(VMMError) in
            throw .readFile(role: "kernel", path: configuration.kernelPath, cause: .init(call: "open", errno: .noEntry))
        }, loadMachine: load)
    }

    func send(_ controller: InstanceController, _ method: String, _ path: String, _ body: String) -> HTTPResponse {
        controller.handle(HTTPRequest(method: method, path: path, body: Array(body.utf8)))
    }

    func fault(_ response: HTTPResponse) -> String {
        ((try? JSONParser.parse(response.body))?["fault_message"]?.stringValue) ?? ""
    }

    func load(_ body: String) throws(APIError) -> SnapshotLoadRequest {
        try SnapshotLoadRequest(json: JSONFields(body: Array(body.utf8), context: "snapshot load"))
    }

    func create(_ body: String) throws(APIError) -> SnapshotCreateRequest {
        try SnapshotCreateRequest(json: JSONFields(body: Array(body.utf8), context: "snapshot create"))
    }

    @Test("create: snapshot_path and mem_file_path are required, snapshot_type defaults to Full, unknown fields and types are refused")
    func createParsing() throws {
        let full = try create(#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
        #expect(full.kind == .full && full.snapshotPath == "/s" && full.memoryPath == "/m")
        #expect(try create(#"{"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}"#).kind == .diff)
        let refused = [
            (#"{"mem_file_path": "/m"}"#, "missing field `snapshot_path`"),
            (#"{"snapshot_path": "/s"}"#, "missing field `mem_file_path`"),
            (#"{"snapshot_type": "Partial", "snapshot_path": "/s", "mem_file_path": "/m"}"#, "unknown variant `Partial`"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "version": "1.0"}"#, "unknown field `version`"),
            (#"{"snapshot_path": 3, "mem_file_path": "/m"}"#, "invalid type"),
        ]
        for (body, message) in refused {
            do throws(APIError) {
                _ = try create(body)
                Issue.record("accepted: \(body)")
            } catch {
                #expect(error.message.contains(message), "\(body): \(error.message)")
                #expect(error.message.hasPrefix("An error occurred when deserializing the json body of a request: "))
            }
        }
    }

    @Test("load: exactly one of mem_backend and mem_file_path, in Firecracker's words; the deprecated fields are noticed")
    func loadParsing() throws {
        let modern = try load(#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": true}"#)
        #expect(modern.backend == .file && modern.memoryPath == "/m" && modern.resume && !modern.deprecated && !modern.trackDirtyPages)
        let old = try load(#"{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true}"#)
        #expect(old.memoryPath == "/m" && old.deprecated && old.trackDirtyPages && !old.resume)
        let overrides = try load(#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}], "vsock_override": {"uds_path": "/v"}, "huge_pages": "None"}"#)
        #expect(overrides.networkOverrides.count == 1 && overrides.networkOverrides[0] == ("eth0", "tap9"))
        #expect(overrides.vsockPath == "/v" && overrides.hugePages == SnapshotLoadRequest.HugePages.none)
        #expect(!overrides.clockRealtime, "clock_realtime defaults to false")
        #expect(try load(#"{"snapshot_path": "/s", "mem_file_path": "/m", "clock_realtime": true}"#).clockRealtime)
        #expect(try !load(#"{"snapshot_path": "/s", "mem_file_path": "/m", "clock_realtime": false}"#).clockRealtime)
        let refused = [
            (#"{"snapshot_path": "/s"}"#, SnapshotLoadRequest.missingMemory),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#, SnapshotLoadRequest.tooManyMemory),
            (#"{"mem_file_path": "/m"}"#, "missing field `snapshot_path`"),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Disk", "backend_path": "/m"}}"#, "unknown variant `Disk`"),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File"}}"#, "missing field `backend_path`"),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_path": "/m"}}"#, "missing field `backend_type`"),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m", "x": 1}}"#, "unknown field `x`"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "resume": true}"#, "unknown field `resume`"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "resume_vm": "yes"}"#, "invalid type"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "huge_pages": "1G"}"#, "unknown variant `1G`"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "clock_realtime": "yes"}"#, "invalid type"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "clock_realtime": 1}"#, "invalid type"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "eth0"}]}"#, "missing field `host_dev_name`"),
        ]
        for (body, message) in refused {
            do throws(APIError) {
                _ = try load(body)
                Issue.record("accepted: \(body)")
            } catch {
                #expect(error.status == 400 && error.message.contains(message), "\(body): \(error.message)")
            }
        }
    }

    @Test("load is refused after a boot-specific resource (even a refused one), and 2M pages are refused before any file is read; Uffd and clock_realtime read the state file first")
    func loadRefusals() throws {
        let controller = try makeController()
        let uffd = send(controller, "PUT", "/snapshot/load", #"{"snapshot_path": "/nonexistent/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#)
        #expect(uffd.status == 400 && fault(uffd).hasPrefix("Load snapshot error: Failed to restore from snapshot: ") && fault(uffd).contains("/nonexistent/s"),
                "\(fault(uffd))")
        let huge = send(controller, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}, "huge_pages": "2M"}"#)
        #expect(huge.status == 400 && fault(huge).contains("huge_pages 2M"), "\(fault(huge))")
        // clock_realtime is accepted: the missing state file is what refuses this one.
        let realtime = send(controller, "PUT", "/snapshot/load", #"{"snapshot_path": "/nonexistent/state", "mem_file_path": "/m", "clock_realtime": true}"#)
        #expect(realtime.status == 400 && fault(realtime).hasPrefix("Load snapshot error: Failed to restore from snapshot: "), "\(fault(realtime))")
        let missing = send(controller, "PUT", "/snapshot/load", #"{"snapshot_path": "/nonexistent/state", "mem_file_path": "/m"}"#)
        #expect(missing.status == 400 && fault(missing).hasPrefix("Load snapshot error: Failed to restore from snapshot: "), "\(fault(missing))")
        #expect(fault(missing).contains("/nonexistent/state"))
        // Logger and metrics do not count; machine-config does, even refused.
        #expect(send(controller, "PUT", "/machine-config", #"{"vcpu_count": 0, "mem_size_mib": 64}"#).status == 400)
        let late = send(controller, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
        #expect(late.status == 400)
        #expect(fault(late) == "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
    }

    @Test("clock_realtime reaches the machine's restore: set when the request asks for it, clear otherwise")
    func clockRealtimeReachesRestore() throws {
        var template = Array("/tmp/swiftlet-clock-XXXXXX".utf8CString)
        // SAFETY: mkdtemp fills in the NUL-terminated template in place.
        let made = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }
        try #require(made != nil)
        let directory = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let statePath = directory + "/state"
        defer {
            unlink(statePath)
            rmdir(directory)
        }
        let machine = SavedMachine(configuration: VMConfiguration(kernelPath: "/vmlinux", memorySize: 64 << 20), diskSizes: [:],
                                   kvmState: MachineKVMState(vcpus: [], vm: VMState(picMaster: [], picSlave: [], ioAPIC: [], pit: [], clock: [])),
                                   memoryLayout: GuestMemoryFileLayout(regions: []), deviceSections: [])
        try SnapshotFile(sections: machine.sections()).write(to: statePath)

        for realtime in [true, false] {
            let seen = Mutex<Bool?>(nil)
            let controller = try makeController(load: { (saved, path) throws(VMMError) in
                seen.withLock { $0 = saved.kvmState.clockRealtime }
                throw .readFile(role: "memory file", path: path, cause: .init(call: "open", errno: .noEntry))
            })
            let response = send(controller, "PUT", "/snapshot/load", #"{"snapshot_path": "\#(statePath)", "mem_file_path": "/m", "clock_realtime": \#(realtime)}"#)
            #expect(response.status == 400 && fault(response).contains("memory file"), "\(fault(response))")
            #expect(seen.withLock { $0 } == realtime)
        }
    }

    @Test("create before InstanceStart is Firecracker's pre-boot refusal; the deprecated mem_file_path answer carries Deprecation")
    func createBeforeStart() throws {
        let controller = try makeController()
        let early = send(controller, "PUT", "/snapshot/create", #"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
        #expect(early.status == 400 && fault(early) == APIError.notSupportedBeforeStart.message)
        let bad = send(controller, "PUT", "/snapshot/create", #"{"snapshot_path": "/s"}"#)
        #expect(bad.status == 400 && fault(bad).contains("missing field `mem_file_path`"))
        #expect(send(controller, "GET", "/snapshot/create", "").status == 405)
    }
}
