import Foundation
import Glibc
import HostSystem
import LeanJSON
import Testing
@testable import ControlAPI
@testable import VMM

@Suite("Control API: drive image locks")
struct DriveLockAPITests {
    @Test("PUT /drives on an image another process holds is a 400 naming it; a free one is accepted")
    func lockedImageRefused() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-lockapi-\(getpid()).img").path
        let created = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        try #require(created >= 0 && ftruncate(created, 1 << 20) == 0)
        close(created)
        defer { unlink(path) }
        let controller = try InstanceController(instanceID: "unit", vmmVersion: "0.1.0", configuration: InstanceConfiguration())
        func put(readOnly: Bool) -> HTTPResponse {
            controller.handle(HTTPRequest(method: "PUT", path: "/drives/data", body: Array(#"{"drive_id": "data", "path_on_host": "\#(path)", "is_root_device": false, "is_read_only": \#(readOnly)}"#.utf8)))
        }
        // Another VMM's writable disk: an exclusive OFD lock on another open of the file.
        var other: OwnedFileDescriptor? = try OwnedFileDescriptor.open(path, flags: O_RDWR)
        #expect(try other?.tryLockWholeFile(.exclusive) == true)
        for readOnly in [false, true] {
            let response = put(readOnly: readOnly)
            let fault = (try? JSONParser.parse(response.body))?["fault_message"]?.stringValue ?? ""
            #expect(response.status == 400)
            #expect(fault.hasPrefix("Drive config error: disk image '\(path)' is locked: another process holds it open"), "\(fault)")
        }
        other = nil
        #expect(put(readOnly: false).status == 204)
    }
}
