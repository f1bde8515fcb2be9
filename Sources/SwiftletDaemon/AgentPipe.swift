import AgentClient
import AgentProtocol
import Foundation
import HTTPTypes
import HostSystem
import Hummingbird
import NIOCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `POST /v1/vms/{name}/agent` (docs/agent.md, "Transport"): a full-duplex
/// byte pipe between the HTTP request and response bodies and the guest
/// agent's vsock port, reached through the VM's vsock socket. The daemon
/// does not parse the frames.
///
/// Each pipe has two threads of its own that do the blocking socket I/O, so
/// no async task ever blocks; each direction holds at most one 64 KiB chunk.
final class AgentPipe: Sendable {
    /// Pipes open at once, over all VMs: more are answered 503.
    static let maximumOpen = 64
    static let open = Mutex(0)

    private let socket: UnixStreamSocket
    /// Response chunks from the agent, one at a time: the reader thread waits
    /// for `consumed` before reading more.
    let fromAgent: AsyncStream<[UInt8]>
    private let fromAgentContinuation: AsyncStream<[UInt8]>.Continuation
    private let consumed = DispatchSemaphore(value: 0)
    /// Request chunks for the writer thread, with the continuation to resume once written.
    private let toAgent = Mutex<[(bytes: [UInt8]?, done: CheckedContinuation<Bool, Never>)]>([])
    private let toAgentReady = DispatchSemaphore(value: 0)
    private let closed = Atomic<Bool>(false)

    init(socket: UnixStreamSocket) {
        self.socket = socket
        (fromAgent, fromAgentContinuation) = AsyncStream<[UInt8]>.makeStream()
        let reader = Thread { [self] in readLoop() }
        reader.name = "agent-pipe-read"
        reader.stackSize = 256 * 1024
        reader.start()
        let writer = Thread { [self] in writeLoop() }
        writer.name = "agent-pipe-write"
        writer.stackSize = 256 * 1024
        writer.start()
    }

    /// Claims one of the `maximumOpen` pipes; false when all are in use.
    static func reserve() -> Bool {
        open.withLock { count in
            guard count < maximumOpen else { return false }
            count += 1
            return true
        }
    }

    static func release() { open.withLock { $0 -= 1 } }

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while !closed.load(ordering: .acquiring) {
            // SAFETY: read(2) writes at most the buffer's length.
            let count = buffer.withUnsafeMutableBytes { Glibc.read(socket.descriptor.rawValue, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            fromAgentContinuation.yield(Array(buffer[0..<count]))
            consumed.wait()
        }
        fromAgentContinuation.finish()
    }

    /// The response side took a chunk: the reader may read the next.
    func chunkSent() { consumed.signal() }

    private func writeLoop() {
        while true {
            toAgentReady.wait()
            guard let item = toAgent.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            guard let bytes = item.bytes else {
                // The request body ended: the agent sees end of stream.
                _ = Glibc.shutdown(socket.descriptor.rawValue, Int32(SHUT_WR))
                item.done.resume(returning: true)
                continue
            }
            if bytes.isEmpty {
                // close(): no more writes.
                item.done.resume(returning: false)
                return
            }
            let written = (try? socket.descriptor.writeAll(bytes)) != nil
            item.done.resume(returning: written)
        }
    }

    /// Writes a request chunk to the agent (nil: end of the request body);
    /// returns once it is written, false when the connection is gone.
    func send(_ bytes: [UInt8]?) async -> Bool {
        if closed.load(ordering: .acquiring) { return false }
        return await withCheckedContinuation { continuation in
            toAgent.withLock { $0.append((bytes, continuation)) }
            toAgentReady.signal()
        }
    }

    /// Ends both threads and closes the socket's directions.
    func close() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = Glibc.shutdown(socket.descriptor.rawValue, Int32(SHUT_RDWR))
        consumed.signal()
        _ = await withCheckedContinuation { continuation in
            toAgent.withLock { $0.append(([], continuation)) }
            toAgentReady.signal()
        }
    }
}

extension DaemonAPI {
    /// Seconds `?timeout=` may ask the VMM to wait for the agent's port.
    static let agentTimeoutRange = 1...60

    func agentPipe(_ request: Request, name: String) async throws -> Response {
        let timeout = try DaemonAPI.query(request, "timeout").map { text throws(DaemonError) in
            try DaemonAPI.wholeNumber(text, field: "timeout", range: DaemonAPI.agentTimeoutRange, unit: "seconds")
        } ?? 10
        let socketPath = try await queries.run {
            _ = try self.row(name)
            return try self.supervisor.agentSocket(name)
        }
        guard AgentPipe.reserve() else {
            throw DaemonError.unavailable("swiftletd has \(AgentPipe.maximumOpen) agent connections open; retry when one ends")
        }
        let socket: UnixStreamSocket
        do {
            // Its own thread: the wait for the guest's answer may take `timeout` seconds.
            socket = try await Self.onThread {
                do {
                    return try AgentConnection.connectVsock(path: socketPath, port: AgentFrame.defaultPort, timeout: Double(timeout))
                } catch {
                    throw DaemonError.unavailable("VM '\(name)': \(error)")
                }
            }
        } catch {
            AgentPipe.release()
            throw error
        }
        let pipe = AgentPipe(socket: socket)
        var headers = HTTPFields()
        headers[.contentType] = "application/vnd.swiftlet.agent"
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            defer { AgentPipe.release() }
            let upload = Task {
                do {
                    for try await buffer in request.body {
                        guard await pipe.send(Array(buffer.readableBytesView)) else { return }
                    }
                    _ = await pipe.send(nil)
                } catch {
                    // The client went away: the agent sees its connection close.
                    await pipe.close()
                }
            }
            do {
                for await chunk in pipe.fromAgent {
                    try await writer.write(ByteBuffer(bytes: chunk))
                    pipe.chunkSent()
                }
            } catch {
                upload.cancel()
                await pipe.close()
                throw error
            }
            upload.cancel()
            await pipe.close()
            try await writer.finish(nil)
        })
    }

    /// Runs blocking `body` on a new thread (waits that may take seconds,
    /// which would hold a pool thread).
    static func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }
            thread.stackSize = 256 * 1024
            thread.start()
        }
    }
}

extension Supervisor {
    /// The host path of a running VM's vsock socket, or why the agent
    /// cannot be reached.
    func agentSocket(_ name: String) throws(DaemonError) -> String {
        let runtime = runtime(name)
        let state = runtime.state
        if runtime.pid != nil, let driver = drivers.driver(named: runtime.hypervisor), !driver.supportsAgent {
            throw .conflict("VM '\(name)' runs under the \(driver.name) driver, which has no vsock device for the guest agent (docs/drivers.md)")
        }
        guard state == .running else {
            throw .conflict("VM '\(name)' is \(state.rawValue): its guest agent answers only while it runs")
        }
        let path = runDirectory(name).vsockSocket
        guard access(path, F_OK) == 0 else {
            throw .unavailable("VM '\(name)' has no vsock device (started by an older swiftletd? restart the VM)")
        }
        return path
    }
}
