import CKVM
import Glibc
import GuestMemory
import HostSystem
import Virtio

/// A connection's identity: the host-side port and the guest's port
/// (the guest's CID is the device's, the host's is 2).
public struct VsockConnectionKey: Hashable, Sendable, CustomStringConvertible {
    public let hostPort: UInt32
    public let guestPort: UInt32

    public init(hostPort: UInt32, guestPort: UInt32) {
        self.hostPort = hostPort
        self.guestPort = guestPort
    }

    public var description: String { "host port \(hostPort) <-> guest port \(guestPort)" }
}

/// Bytes the guest sent that the host socket has not taken yet, in a
/// fixed-capacity ring allocated on first use. Credit-based flow control
/// bounds what the guest may send to this capacity.
struct ByteRing {
    let capacity: Int
    private var storage: [UInt8] = []
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) { self.capacity = capacity }

    var isEmpty: Bool { count == 0 }
    var free: Int { capacity - count }

    mutating func clear() {
        storage = []
        head = 0
        count = 0
    }

    /// Appends the guest bytes in `buffers`; the caller checked that they fit.
    mutating func append(memory: GuestMemory, buffers: [GuestBuffer]) throws(GuestMemoryError) {
        if storage.isEmpty { storage = [UInt8](repeating: 0, count: capacity) }
        for buffer in buffers {
            var tail = (head + count) % capacity
            let outcome = Result { () throws(GuestMemoryErrorOr<Never>) in
                try memory.withHostBytes(at: buffer.address, length: UInt64(buffer.length)) { source in
                    var copied = 0
                    // SAFETY: each copy stays inside `storage` (tail + step <= capacity) and `source`.
                    storage.withUnsafeMutableBytes { ring in
                        while copied < source.count {
                            let step = min(source.count - copied, capacity - tail)
                            UnsafeMutableRawBufferPointer(rebasing: ring[tail..<(tail + step)])
                                .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[copied..<(copied + step)]))
                            copied += step
                            tail = (tail + step) % capacity
                        }
                    }
                }
            }
            switch outcome {
            case .success: count += Int(buffer.length)
            case let .failure(.memory(error)): throw error
            }
        }
    }

    /// Sends as much as the socket takes; returns how many bytes went.
    mutating func send(to socket: OwnedFileDescriptor) throws(SystemCallError) -> Int {
        guard count > 0 else { return 0 }
        let first = min(count, capacity - head)
        let second = count - first
        let head = head
        // SAFETY: both iovecs lie inside `storage` and are used only by this sendmsg.
        let sent = try storage.withUnsafeMutableBytes { ring in
            Result { () throws(SystemCallError) -> Int in
                guard let base = ring.baseAddress else { return 0 }
                var vectors = [iovec(iov_base: base + head, iov_len: first)]
                if second > 0 { vectors.append(iovec(iov_base: base, iov_len: second)) }
                // SAFETY: the iovec array lives for this call only.
                return try vectors.withUnsafeBufferPointer { (pointer) throws(SystemCallError) -> Int in try UnixSocket.send(socket, pointer) }
            }
        }.get()
        self.head = (head + sent) % capacity
        count -= sent
        return sent
    }
}

/// One stream between a guest AF_VSOCK socket and a host AF_UNIX socket,
/// with its state, pending control packets and flow-control counters. The
/// muxer owns it and drives it from the worker thread.
final class VsockConnection {
    enum State: Equatable {
        /// Host-initiated: REQUEST sent (or pending); waiting for RESPONSE.
        case connecting
        /// Guest-initiated: the host socket connected; RESPONSE pending.
        case accepting
        case established
        /// The guest will neither send nor receive; draining our TX buffer, then RST.
        case closing
        /// Being torn down: an RST is pending for the guest.
        case killed
    }

    let key: VsockConnectionKey
    /// The epoll token of this connection's socket.
    let token: UInt64
    /// The host socket; nil once the connection is killed (closed at once).
    var socket: OwnedFileDescriptor?
    var state: State
    let hostInitiated: Bool

    // Packets owed to the guest.
    var pendingRequest = false
    var pendingResponse = false
    var pendingReset = false
    var pendingCreditUpdate = false
    /// The host socket reported readable and has not been drained since.
    var hostReadable = false
    /// A CREDIT_REQUEST went out and no credit arrived since.
    var creditRequested = false

    /// Half-close state: the host stopped sending (we told the guest with
    /// SHUTDOWN); the guest will not send / receive any more.
    var hostSendClosed = false
    var guestSendClosed = false
    var guestReceiveClosed = false
    /// shutdown(SHUT_WR) done on the host socket.
    var hostWriteShut = false

    // Flow control (VirtIO 1.2 section 5.10.6.3): our side.
    var transmitBuffer: ByteRing
    /// Guest bytes written to the host socket, ever (our fwd_cnt).
    var forwardCount: UInt32 = 0
    /// The fwd_cnt in the last packet we sent the guest.
    var advertisedForwardCount: UInt32 = 0
    // The guest's side.
    var peerBufferAllocation: UInt32
    var peerForwardCount: UInt32 = 0
    /// Bytes sent to the guest, ever (wrapping).
    var sentToGuest: UInt32 = 0

    /// When the connection is reset if it has not progressed (monotonic ns).
    var deadline: UInt64?
    /// The epoll events registered now (0: not registered).
    var registeredEvents: UInt32 = 0
    /// In the muxer's RX round-robin.
    var scheduled = false

    init(key: VsockConnectionKey, token: UInt64, socket: OwnedFileDescriptor, hostInitiated: Bool,
         peerBufferAllocation: UInt32, peerForwardCount: UInt32, bufferSize: Int) {
        self.key = key
        self.token = token
        self.socket = socket
        self.hostInitiated = hostInitiated
        state = hostInitiated ? .connecting : .accepting
        pendingRequest = hostInitiated
        pendingResponse = !hostInitiated
        self.peerBufferAllocation = peerBufferAllocation
        self.peerForwardCount = peerForwardCount
        transmitBuffer = ByteRing(capacity: bufferSize)
    }

    /// Bytes the guest can take now: its buffer minus what is in flight.
    /// A guest that reports more forwarded than was sent gets no credit.
    var peerCredit: UInt32 {
        let inFlight = sentToGuest &- peerForwardCount
        return inFlight >= peerBufferAllocation ? 0 : peerBufferAllocation - inFlight
    }

    /// Host-to-guest data may flow.
    var receiveOpen: Bool { state == .established && !guestReceiveClosed && !hostSendClosed }

    /// Guest-to-host data may flow.
    var transmitOpen: Bool { (state == .established || state == .closing) && !guestSendClosed }

    /// Something is owed to the guest (what `nextPacket` would produce).
    var hasReceiveWork: Bool {
        if pendingReset || pendingResponse || pendingRequest || pendingCreditUpdate { return true }
        guard receiveOpen, hostReadable else { return false }
        return peerCredit > 0 || !creditRequested
    }

    /// The epoll events this connection wants: readable while data may
    /// flow to the guest and has not been seen yet, writable while the TX
    /// buffer holds data. None means it is left out of epoll (so a hung-up
    /// socket cannot spin the worker).
    var wantedEvents: UInt32 {
        guard socket != nil, state != .killed else { return 0 }
        var events: UInt32 = 0
        if receiveOpen && !hostReadable && peerCredit > 0 { events |= EPOLLIN.rawValue }
        if !transmitBuffer.isEmpty { events |= EPOLLOUT.rawValue }
        return events
    }

    /// Marks the connection for teardown: the host socket closes now, an
    /// RST goes to the guest when an RX buffer allows.
    func kill() {
        state = .killed
        pendingReset = true
        pendingRequest = false
        pendingResponse = false
        hostReadable = false
        transmitBuffer.clear()
        socket = nil
        deadline = nil
    }
}
