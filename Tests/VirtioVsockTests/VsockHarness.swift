import Glibc
import GuestMemory
import HostSystem
import Testing
import Virtio
import VirtioTestSupport
@testable import VirtioVsock

/// A muxer driven by hand: a driver-side mock of the RX and TX queues,
/// the device's listener in a temporary folder, and plain blocking host
/// sockets, as a guest driver and host programs would use them.
final class VsockHarness {
    static let guestCID: UInt64 = 3

    let memory: GuestMemory
    let receive: DriverQueue
    let transmit: DriverQueue
    let events: DriverQueue
    let interrupt = RecordingInterrupt()
    let counters = VirtioCounters()
    let vsockCounters = VsockCounters()
    let directory: String
    let listener: VsockHostListener
    let muxer: VsockMuxer
    /// Where each posted RX chain's single buffer is, by head.
    var receiveBuffers: [UInt32: GuestAddress] = [:]
    let receiveBufferSize: Int
    /// Host listeners the test opened at `<uds>_<port>`.
    var hostListeners: [UInt32: Int32] = [:]

    init(limits: VsockMuxer.Limits = .init(), receiveBufferSize: Int = 4096 + VsockHeader.size, features: UInt64 = 0) throws {
        memory = try GuestMemory(ranges: [(GuestAddress(0), 32 << 20)])
        receive = DriverQueue(memory: memory, size: 256, base: GuestAddress(0x10000))
        transmit = DriverQueue(memory: memory, size: 256, base: GuestAddress(0x1000000))
        events = DriverQueue(memory: memory, size: 16, base: GuestAddress(0x1F00000))
        self.receiveBufferSize = receiveBufferSize
        var template = Array("/tmp/swiftlet-vsock-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw HarnessError.setup("mkdtemp failed") }
        directory = String(cString: made)
        listener = try VsockHostListener.acquire(path: directory + "/v.sock")
        let activation = VirtioActivation(
            memory: memory, features: features,
            queues: [
                VirtioQueueActivation(index: 0, queue: try receive.deviceQueue(features: features), notification: try EventFD()),
                VirtioQueueActivation(index: 1, queue: try transmit.deviceQueue(features: features), notification: try EventFD()),
                VirtioQueueActivation(index: 2, queue: try events.deviceQueue(features: features), notification: try EventFD()),
            ],
            interrupt: interrupt)
        muxer = try VsockMuxer(guestCID: Self.guestCID, activation: activation, listener: listener, counters: counters,
                               vsockCounters: vsockCounters, limits: limits)
    }

    deinit {
        muxer.shutdown()
        for descriptor in hostListeners.values { close(descriptor) }
        for port in hostListeners.keys { unlink("\(listener.path)_\(port)") }
        rmdir(directory)
    }

    enum HarnessError: Error { case setup(String) }

    // MARK: Guest side

    /// The driver transmits one packet (header and payload in two buffers) and notifies.
    func send(_ header: VsockHeader, payload: [UInt8] = [], notify: Bool = true) {
        var header = header
        if header.length == 0 && !payload.isEmpty { header.length = UInt32(payload.count) }
        let headerAddress = transmit.allocate(VsockHeader.size)
        try? memory.write(bytes: header.bytes, at: headerAddress)
        var buffers = [DriverQueue.Buffer(address: headerAddress, length: UInt32(VsockHeader.size), writable: false)]
        if !payload.isEmpty {
            let address = transmit.allocate(payload.count)
            try? memory.write(bytes: payload, at: address)
            buffers.append(DriverQueue.Buffer(address: address, length: UInt32(payload.count), writable: false))
        }
        transmit.addChain(buffers)
        if notify { kickTransmit() }
    }

    func kickTransmit() {
        muxer.handle([Epoll.Event(token: VsockMuxer.Token.transmitNotification, events: 1)], now: VsockMuxer.now())
    }

    /// A guest packet from `guestPort` to host port `hostPort`.
    func guestHeader(_ operation: VsockOperation, guestPort: UInt32, hostPort: UInt32, length: UInt32 = 0, flags: UInt32 = 0,
                     bufferAllocation: UInt32 = 256 * 1024, forwardCount: UInt32 = 0) -> VsockHeader {
        VsockHeader(operation: operation, sourceCID: Self.guestCID, destinationCID: Vsock.hostCID, sourcePort: guestPort,
                    destinationPort: hostPort, length: length, flags: flags, bufferAllocation: bufferAllocation, forwardCount: forwardCount)
    }

    /// The driver posts `count` RX buffers and notifies.
    func postReceiveBuffers(_ count: Int, notify: Bool = true) {
        for _ in 0..<count {
            let address = receive.allocate(receiveBufferSize)
            let head = receive.addChain([DriverQueue.Buffer(address: address, length: UInt32(receiveBufferSize), writable: true)])
            receiveBuffers[UInt32(head)] = address
        }
        if notify {
            muxer.handle([Epoll.Event(token: VsockMuxer.Token.receiveNotification, events: 1)], now: VsockMuxer.now())
        }
    }

    /// Packets the device put on the RX queue since the last call.
    func receivedPackets() -> [(header: VsockHeader, payload: [UInt8])] {
        var packets: [(VsockHeader, [UInt8])] = []
        while let used = receive.popUsed() {
            guard let address = receiveBuffers.removeValue(forKey: used.head), used.length >= UInt32(VsockHeader.size),
                  let bytes = try? memory.readBytes(at: address, count: Int(used.length)) else {
                packets.append((VsockHeader(), []))
                continue
            }
            let header = VsockHeader(bytes: Array(bytes[..<VsockHeader.size]))
            packets.append((header, Array(bytes[VsockHeader.size...])))
        }
        return packets
    }

    /// Lets the muxer handle socket readiness until `done` holds or ~2 s pass.
    func pump(until done: () -> Bool = { false }, rounds: Int = 200) {
        for _ in 0..<rounds {
            muxer.poll(timeout: 10)
            if done() { return }
        }
    }

    // MARK: Host side

    /// Listens at `<uds>_<port>` for guest-initiated connections.
    func listenOnHost(port: UInt32) throws {
        let path = "\(listener.path)_\(port)"
        guard let address = UnixSocket.address(path) else { throw HarnessError.setup("bad path") }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var copy = address
        let bound = withUnsafePointer(to: &copy) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(descriptor, 16) == 0 else { throw HarnessError.setup("bind \(path)") }
        hostListeners[port] = descriptor
    }

    func acceptOnHost(port: UInt32) -> Int32? {
        guard let listener = hostListeners[port], waitReadable(listener, milliseconds: 2000) else { return nil }
        let descriptor = accept(listener, nil, nil)
        return descriptor >= 0 ? descriptor : nil
    }

    /// A host client connected to the device's socket (blocking).
    func connectToDevice() throws -> Int32 {
        guard var address = UnixSocket.address(listener.path) else { throw HarnessError.setup("bad path") }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw HarnessError.setup("connect \(listener.path)") }
        return descriptor
    }

    func waitReadable(_ descriptor: Int32, milliseconds: Int32) -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return Glibc.poll(&entry, 1, milliseconds) == 1
    }

    func write(_ descriptor: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { return }
            offset += written
        }
    }

    /// Reads what is there (waiting up to `milliseconds` for the first byte); nil at end of file.
    func read(_ descriptor: Int32, milliseconds: Int32 = 2000) -> [UInt8]? {
        guard waitReadable(descriptor, milliseconds: milliseconds) else { return [] }
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        let count = buffer.withUnsafeMutableBytes { Glibc.recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if count == 0 { return nil }
        return count < 0 ? [] : Array(buffer[..<count])
    }
}

/// Deterministic test data.
func pattern(_ count: Int, seed: UInt8 = 0) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ ($0 >> 8)) }
}
