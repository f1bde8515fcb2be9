import Foundation
import Glibc
import GuestMemory
import HostSystem
import Synchronization
import Testing
@testable import UffdHandler

/// The handler and the VMM side of the protocol in one process, without
/// KVM: guest RAM registered with a userfaultfd faults into a handler
/// thread serving it from a memory file.
@Suite("Uffd page-fault handler", .serialized)
struct PageFaultHandlerTests {
    static func temporaryPath(_ name: String) -> String {
        "\(FileManager.default.temporaryDirectory.path)/swiftlet-uffd-\(getpid())-\(name)"
    }

    /// Whether this process may create a userfaultfd (syscall or
    /// /dev/userfaultfd); prints why not.
    static var userfaultUsable: Bool {
        do {
            _ = try UserfaultFD.create()
            return true
        } catch {
            print("skipping: userfaultfd is not available here (\(error)); vm.unprivileged_userfaultfd=0 needs CAP_SYS_PTRACE or access to /dev/userfaultfd")
            return false
        }
    }

    /// Two regions (a hole between them, as the x86 layout), each page
    /// stamped with its region, page and a pattern, written as a memory file.
    static func writeMemoryFile(_ path: String) throws -> (GuestMemoryFileLayout, [(GuestAddress, UInt64)]) {
        let ranges: [(start: GuestAddress, size: UInt64)] = [(GuestAddress(0), 0x40_0000), (GuestAddress(1 << 32), 0x10_0000)]
        let memory = try GuestMemory(ranges: ranges)
        for (index, range) in ranges.enumerated() {
            for page in stride(from: UInt64(0), to: range.size, by: 0x1000) {
                try memory.write(UInt64(0x5EED_0000_0000_0000) | UInt64(index) << 40 | page, at: range.start + page)
                try memory.write(UInt32(0xC0FFEE) ^ UInt32(truncatingIfNeeded: page), at: range.start + page + 0xFFC)
            }
        }
        return (try memory.writeMemoryFile(to: path), ranges.map { ($0.start, $0.size) })
    }

    /// Runs the handler on its own thread; the result comes back through `finished`.
    final class HandlerRun: Sendable {
        let result = Mutex<Result<PageFaultHandler.Statistics, UffdHandlerError>?>(nil)
        let done = DispatchSemaphore(value: 0)

        init(memoryPath: String, socketPath: String) throws {
            let handler = try PageFaultHandler(memoryPath: memoryPath)
            // The handler is used by this thread only.
            nonisolated(unsafe) let unsafeHandler = handler
            Thread.detachNewThread { [self] in
                let outcome = Result { () throws(UffdHandlerError) in try unsafeHandler.run(socketPath: socketPath) }
                result.withLock { $0 = outcome }
                done.signal()
            }
        }

        func wait(seconds: Int) -> Result<PageFaultHandler.Statistics, UffdHandlerError>? {
            guard done.wait(timeout: .now() + .seconds(seconds)) == .success else { return nil }
            return result.withLock { $0 }
        }
    }

    static func waitForSocket(_ path: String) -> Bool {
        for _ in 0..<500 {
            if FileManager.default.fileExists(atPath: path) { return true }
            usleep(10_000)
        }
        return false
    }

    @Test("guest RAM registered with a userfaultfd is filled page by page from the memory file by the handler, which ends when the VMM side goes")
    func servesFromFile() throws {
        guard Self.userfaultUsable else { return }
        let memoryPath = Self.temporaryPath("mem"), socketPath = Self.temporaryPath("sock")
        defer { unlink(memoryPath); unlink(socketPath) }
        let (layout, ranges) = try Self.writeMemoryFile(memoryPath)
        let run = try HandlerRun(memoryPath: memoryPath, socketPath: socketPath)
        #expect(Self.waitForSocket(socketPath))

        let touched = try Self.touchPages(layout, ranges, socketPath)
        // The memory (and with it the connection) is gone: the handler ends.
        #expect(!FileManager.default.fileExists(atPath: socketPath), "the handler removes its socket once the VMM is connected")
        let outcome = try #require(run.wait(seconds: 10), "the handler did not end after the VMM side closed")
        let statistics = try outcome.get()
        #expect(statistics.pagesCopied >= touched, "\(statistics)")
        #expect(statistics.ignoredEvents == 0, "\(statistics)")
        // The file is untouched by the guest's write (private copies only).
        let file = try OwnedFileDescriptor.open(memoryPath, flags: O_RDONLY)
        var byte: UInt8 = 0
        // SAFETY: pread writes one byte into `byte`.
        _ = try withUnsafeMutableBytes(of: &byte) { raw in try file.read(into: raw, atOffset: 0x1008) }
        #expect(byte == 0)
    }

    /// The VMM side: maps RAM through the handler, reads and writes pages,
    /// and drops it all on return. Returns how many pages were read.
    static func touchPages(_ layout: GuestMemoryFileLayout, _ ranges: [(GuestAddress, UInt64)], _ socketPath: String) throws -> Int {
        let guest = try GuestMemory(userfaultLayout: layout, socketPath: socketPath)
        #expect(guest.pageFaultHandler?.isConnected == true)
        // Reads fault pages in from the file, in both regions, in any order.
        var touched = 0
        for (index, (start, size)) in ranges.enumerated() {
            for page in stride(from: size - 0x1000, through: 0, by: -0x3000) {
                #expect(try guest.read(UInt64.self, at: start + page) == UInt64(0x5EED_0000_0000_0000) | UInt64(index) << 40 | page)
                #expect(try guest.read(UInt32.self, at: start + page + 0xFFC) == UInt32(0xC0FFEE) ^ UInt32(truncatingIfNeeded: page))
                touched += 1
            }
        }
        // A write to a missing page faults it in first; the rest of the page is the file's.
        try guest.write(UInt8(0xAB), at: GuestAddress(0x1000 + 8))
        #expect(try guest.read(UInt64.self, at: GuestAddress(0x1000)) == 0x5EED_0000_0000_1000)
        #expect(try guest.read(UInt8.self, at: GuestAddress(0x1000 + 8)) == 0xAB)
        return touched
    }

    @Test("the VMM side refuses a missing socket and a socket nobody listens on with the path and the cause")
    func connectRefusals() throws {
        guard Self.userfaultUsable else { return }
        let layout = GuestMemoryFileLayout(regions: [.init(start: GuestAddress(0), size: 0x10_0000, fileOffset: 0)])
        let missing = Self.temporaryPath("absent.sock")
        do {
            _ = try GuestMemory(userfaultLayout: layout, socketPath: missing)
            Issue.record("connected to a missing socket")
        } catch {
            #expect(error.description == "page-fault handler at \(missing): connecting to its socket: connect \(missing) failed: No such file or directory (errno 2)")
        }
        // A socket file whose listener closed: connection refused.
        let closed = Self.temporaryPath("closed.sock")
        defer { unlink(closed) }
        do {
            let socket = try UnixStreamSocket.listen(path: closed)
            _ = socket
        }
        do {
            _ = try GuestMemory(userfaultLayout: layout, socketPath: closed)
            Issue.record("connected to a closed socket")
        } catch {
            #expect(error.description.contains(closed) && error.description.contains("Connection refused"), "\(error)")
        }
    }

    /// A connected pair: (VMM end, handler end).
    static func socketPair() throws -> (UnixStreamSocket, UnixStreamSocket) {
        var fds: [Int32] = [-1, -1]
        // SAFETY: socketpair writes two descriptors into the two-element array.
        let result = fds.withUnsafeMutableBufferPointer { socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, $0.baseAddress) }
        try #require(result == 0)
        return (UnixStreamSocket(adopting: OwnedFileDescriptor(adopting: fds[0])), UnixStreamSocket(adopting: OwnedFileDescriptor(adopting: fds[1])))
    }

    @Test("the handshake refuses a message without a userfaultfd, bad JSON, mappings past the file's end and a VMM that hangs up; a message split in two is put together")
    func handshakeRefusals() throws {
        let memoryPath = Self.temporaryPath("hs-mem")
        defer { unlink(memoryPath) }
        let (layout, _) = try Self.writeMemoryFile(memoryPath)
        let handler = try PageFaultHandler(memoryPath: memoryPath)
        let fileSize = handler.memorySize
        #expect(fileSize == 0x50_0000)
        let good = Array(GuestRegionUffdMapping.json([
            GuestRegionUffdMapping(baseHostVirtualAddress: 0x7000_0000_0000, size: layout.regions[0].size, offset: 0, pageSize: 4096),
        ]).utf8)
        let attachment = try OwnedFileDescriptor.open("/dev/null", flags: O_RDONLY)

        func refused(_ expected: (UffdHandlerError) -> Bool, _ what: Comment, send: (UnixStreamSocket) throws -> Void) throws {
            let (vmm, end) = try Self.socketPair()
            try send(vmm)
            do throws(UffdHandlerError) {
                _ = try handler.handshake(end, seconds: 2)
                Issue.record("accepted: \(what)")
            } catch {
                #expect(expected(error), "\(what): \(error)")
            }
        }
        try refused({ if case .noDescriptor = $0 { true } else { false } }, "no descriptor") { vmm in
            try vmm.descriptor.writeAll(good)
        }
        try refused({ if case .malformedMappings = $0 { true } else { false } }, "not an array") { vmm in
            try vmm.send(Array("{\"a\":1}".utf8), attaching: attachment.rawValue)
        }
        try refused({ $0 == .mappingOutsideFile(index: 0, offset: 0x20_0000, size: 0x40_0000, fileSize: fileSize) }, "past the end") { vmm in
            try vmm.send(Array(#"[{"base_host_virt_addr":4096,"size":4194304,"offset":2097152,"page_size":4096}]"#.utf8), attaching: attachment.rawValue)
        }
        try refused({ if case .noMessage = $0 { true } else { false } }, "hang-up mid-message") { vmm in
            try vmm.send(Array(good.prefix(10)), attaching: attachment.rawValue)
            _ = shutdown(vmm.descriptor.rawValue, Int32(SHUT_WR))
        }
        try refused({ if case .noMessage = $0 { true } else { false } }, "silence") { _ in }

        let (vmm, end) = try Self.socketPair()
        try vmm.send(Array(good.prefix(30)), attaching: attachment.rawValue)
        Thread.detachNewThread {
            usleep(100_000)
            _ = try? vmm.descriptor.writeAll(good.dropFirst(30))
        }
        let (mappings, _) = try handler.handshake(end, seconds: 5)
        #expect(mappings == [UffdRegionMapping(baseHostVirtualAddress: 0x7000_0000_0000, size: 0x40_0000, offset: 0, pageSize: 4096)])
    }
}
