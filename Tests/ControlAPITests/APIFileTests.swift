import Foundation
import Glibc
import HostSystem
import LeanJSON
import Synchronization
import Testing
@testable import ControlAPI
@testable import VMM

/// Files API callers name (kernel, initrd, drives) are opened without
/// blocking, must be regular files (or block devices for drives) and fit their caps.
@Suite("Control API: files named by callers", .serialized)
struct APIFileTests {
    func makeController() throws -> InstanceController {
        try InstanceController(instanceID: "unit", vmmVersion: "0.1.0", configuration: InstanceConfiguration()) { (configuration) throws(VMMError) in
            throw .readFile(role: "kernel", path: configuration.kernelPath, cause: .init(call: "open", errno: .noEntry))
        }
    }

    func fault(_ response: HTTPResponse) -> String {
        (try? JSONParser.parse(response.body))?["fault_message"]?.stringValue ?? ""
    }

    static func temporaryPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-files-\(getpid())-\(name)").path
    }

    /// Sends the request on another thread and waits at most 20 s: a handler
    /// stuck in open(2) on a FIFO fails the test (and is then released by
    /// opening the FIFO's other end) instead of hanging the suite.
    func sendBounded(_ controller: InstanceController, _ method: String, _ path: String, _ body: String, fifo: String) -> HTTPResponse? {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<HTTPResponse?>(nil)
        Thread {
            let response = controller.handle(HTTPRequest(method: method, path: path, body: Array(body.utf8)))
            result.withLock { $0 = response }
            done.signal()
        }.start()
        if done.wait(timeout: .now() + 20) == .timedOut {
            let writer = open(fifo, O_RDWR | O_NONBLOCK)
            let reader = open(fifo, O_RDONLY | O_NONBLOCK)
            done.wait()
            close(writer)
            close(reader)
            return nil
        }
        return result.withLock { $0 }
    }

    @Test("A FIFO as kernel_image_path, initrd_path or path_on_host is refused with a 400, not waited on")
    func fifoRefused() throws {
        let fifo = Self.temporaryPath("fifo")
        unlink(fifo)
        try #require(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        let controller = try makeController()
        let kernel = sendBounded(controller, "PUT", "/boot-source", #"{"kernel_image_path": "\#(fifo)"}"#, fifo: fifo)
        #expect(kernel?.status == 400, "the handler blocked on the FIFO")
        #expect(fault(try #require(kernel)) == "Boot source error: kernel_image_path '\(fifo)' is a FIFO: expected a regular file")
        let initrd = sendBounded(controller, "PUT", "/boot-source", #"{"kernel_image_path": "/etc/hostname", "initrd_path": "\#(fifo)"}"#, fifo: fifo)
        #expect(initrd?.status == 400, "the handler blocked on the FIFO")
        #expect(fault(try #require(initrd)).contains("initrd_path '\(fifo)' is a FIFO"))
        for readOnly in [true, false] {
            let drive = sendBounded(controller, "PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "\#(fifo)", "is_root_device": true, "is_read_only": \#(readOnly)}"#, fifo: fifo)
            #expect(drive?.status == 400, "the handler blocked on the FIFO")
            #expect(fault(try #require(drive)).contains("'\(fifo)' is a FIFO: expected a raw image file or a block device"))
        }
    }

    @Test("A FIFO without a reader as serial_out_path is refused when the VM is built, not waited on")
    func serialFIFORefused() throws {
        let fifo = Self.temporaryPath("serial-fifo")
        unlink(fifo)
        try #require(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<String?>(nil)
        Thread {
            do {
                _ = try VirtualMachine.makeSerialOutput(.file(path: fifo))
                outcome.withLock { $0 = "opened" }
            } catch {
                outcome.withLock { $0 = "\(error)" }
            }
            done.signal()
        }.start()
        if done.wait(timeout: .now() + 20) == .timedOut {
            let reader = open(fifo, O_RDONLY | O_NONBLOCK)
            done.wait()
            close(reader)
            Issue.record("opening the FIFO blocked")
            return
        }
        #expect(outcome.withLock { $0 } == "invalid serial output '\(fifo)': expected a file, or a FIFO that a reader has open")
        // With a reader it is a valid target.
        let reader = open(fifo, O_RDONLY | O_NONBLOCK)
        defer { close(reader) }
        #expect(throws: Never.self) { try VirtualMachine.makeSerialOutput(.file(path: fifo)) }
    }

    @Test("A device or a directory as kernel or initrd is refused naming what it is")
    func specialFilesRefused() throws {
        let controller = try makeController()
        let device = controller.handle(HTTPRequest(method: "PUT", path: "/boot-source", body: Array(#"{"kernel_image_path": "/dev/zero"}"#.utf8)))
        #expect(device.status == 400)
        #expect(fault(device) == "Boot source error: kernel_image_path '/dev/zero' is a character device: expected a regular file")
        let directory = controller.handle(HTTPRequest(method: "PUT", path: "/boot-source", body: Array(#"{"kernel_image_path": "/etc/hostname", "initrd_path": "/tmp"}"#.utf8)))
        #expect(directory.status == 400)
        #expect(fault(directory).contains("initrd_path '/tmp' is a directory: expected a regular file"))
        let drive = controller.handle(HTTPRequest(method: "PUT", path: "/drives/d", body: Array(#"{"drive_id": "d", "path_on_host": "/dev/zero", "is_root_device": false, "is_read_only": true}"#.utf8)))
        #expect(drive.status == 400 && fault(drive).contains("is a character device"), "\(fault(drive))")
    }

    @Test("A kernel over its cap is refused when PUT, and when the VM is built, with the sizes in the message")
    func sizeCaps() throws {
        let big = Self.temporaryPath("big-kernel")
        let descriptor = open(big, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        try #require(descriptor >= 0)
        defer { unlink(big) }
        // Sparse: no disk space used.
        let size = VMConfiguration.maximumKernelSize + 4096
        #expect(ftruncate(descriptor, off_t(size)) == 0)
        close(descriptor)
        let controller = try makeController()
        let response = controller.handle(HTTPRequest(method: "PUT", path: "/boot-source", body: Array(#"{"kernel_image_path": "\#(big)"}"#.utf8)))
        #expect(response.status == 400)
        #expect(fault(response) == "Boot source error: kernel_image_path '\(big)' is \(size) bytes: at most \(VMConfiguration.maximumKernelSize) (512 MiB) are accepted")
        #expect(throws: VMMError.self) { try VirtualMachine.readFile(role: "kernel", path: big, maximumSize: VMConfiguration.maximumKernelSize) }
        do {
            _ = try VirtualMachine.readFile(role: "initrd", path: big, maximumSize: 16 << 20)
        } catch {
            #expect(error.description == "initrd '\(big)' is \(size) bytes: at most \(16 << 20) (16 MiB) are accepted")
        }
        #expect(try VirtualMachine.readFile(role: "kernel", path: "/etc/hostname", maximumSize: 1 << 20) == OwnedFileDescriptor.readWholeFile("/etc/hostname"))
    }
}
