import CKVM
import Glibc
import GuestMemory
import HostSystem
import Synchronization
import Virtio

/// The device's data plane, run by its worker thread: the RX and TX
/// queues, the host listener, every connection and the host sockets still
/// writing their CONNECT line, all in one epoll set.
///
/// Nothing here blocks: sockets are non-blocking; a host reader that falls
/// behind fills only its own connection's TX buffer, which the guest cannot
/// overrun without breaking the credit it was given (then that connection
/// is reset); a guest that posts no RX buffers stalls only RX, and host
/// sockets with data to deliver leave the epoll set meanwhile.
final class VsockMuxer {
    /// Limits, each bounding memory or work a guest or host client can cause.
    struct Limits: Sendable {
        /// Open connections at once (Firecracker's limit).
        var connections = 1023
        /// Accepted host sockets still writing their CONNECT line.
        var pendingHostStreams = 64
        /// RSTs waiting for RX buffers; more are dropped (and counted).
        var pendingResets = 256
        /// Each connection's buffer for guest data the host has not read,
        /// advertised to the guest as buf_alloc.
        var bufferSize = 64 * 1024
        /// How long the guest has to answer a host-initiated REQUEST, a
        /// host client to write its CONNECT line, and a closing connection
        /// to drain its TX buffer (milliseconds).
        var connectTimeoutMilliseconds: UInt64 = 5000
        var connectLineTimeoutMilliseconds: UInt64 = 5000
        var drainTimeoutMilliseconds: UInt64 = 5000
        /// Packets per queue per wake-up before the worker yields to other events.
        var packetBudget = 256

        init() {}
    }

    /// Tokens of the fixed descriptors; connections and host streams get larger ones.
    enum Token {
        static let stop: UInt64 = 0
        static let receiveNotification: UInt64 = 1
        static let transmitNotification: UInt64 = 2
        static let listener: UInt64 = 3
        static let kick: UInt64 = 4
        static let firstDynamic: UInt64 = 16
    }

    /// An accepted host socket that has not written its CONNECT line yet.
    struct HostStream {
        let socket: OwnedFileDescriptor
        let deadline: UInt64
    }

    let guestCID: UInt64
    let limits: Limits
    let memory: GuestMemory
    let interrupt: any VirtioInterrupt
    let counters: VirtioCounters
    let vsockCounters: VsockCounters
    let listener: VsockHostListener?
    let epoll: Epoll
    /// Wakes the worker at once when a budget ran out with work left.
    let kick: EventFD
    var receiveQueue: Virtqueue?
    var transmitQueue: Virtqueue?
    let receiveNotification: EventFD?
    let transmitNotification: EventFD?
    /// The driver broke a queue: nothing is served until reset.
    var broken = false

    var connections: [VsockConnectionKey: VsockConnection] = [:]
    /// Connection tokens to their keys.
    var connectionTokens: [UInt64: VsockConnectionKey] = [:]
    var hostStreams: [UInt64: HostStream] = [:]
    var nextToken = Token.firstDynamic
    /// RSTs for packets that match no connection: (host port, guest port).
    var pendingResets = FIFO<VsockConnectionKey>()
    /// Connections with packets for the guest, served round-robin.
    var ready = FIFO<VsockConnectionKey>()
    /// An RX chain taken from the ring and not used yet.
    var spareChain: DescriptorChain?
    /// RX notifications are enabled because the ring ran dry with work pending.
    var receiveStalled = false
    /// RX chains returned unused since the last interrupt decision.
    var refusedChains = 0
    /// The last host port given to a host-initiated connection; they are
    /// handed out round-robin in [2^30, 2^31), as Firecracker does.
    var lastHostPort: UInt32 = (1 << 30) - 1

    init(guestCID: UInt64, activation: VirtioActivation, listener: VsockHostListener?, counters: VirtioCounters,
         vsockCounters: VsockCounters, limits: Limits = Limits()) throws(SystemCallError) {
        self.guestCID = guestCID
        self.limits = limits
        memory = activation.memory
        interrupt = activation.interrupt
        self.counters = counters
        self.vsockCounters = vsockCounters
        self.listener = listener
        let receive = activation.queues.first { $0.index == Vsock.receiveQueue }
        let transmit = activation.queues.first { $0.index == Vsock.transmitQueue }
        receiveQueue = receive?.queue
        transmitQueue = transmit?.queue
        receiveNotification = receive?.notification
        transmitNotification = transmit?.notification
        epoll = try Epoll()
        kick = try EventFD()
        if let receive { try epoll.add(receive.notification.descriptor.rawValue, token: Token.receiveNotification) }
        if let transmit { try epoll.add(transmit.notification.descriptor.rawValue, token: Token.transmitNotification) }
        if let listener { try epoll.add(listener.descriptor.rawValue, token: Token.listener) }
        try epoll.add(kick.descriptor.rawValue, token: Token.kick)
        // RX buffers are found by looking while there is work; notifications
        // are asked for only when the ring runs dry.
        _ = try? receiveQueue?.disableNotifications()
    }

    /// Closes every host socket (the connections go with the muxer).
    func shutdown() {
        for connection in connections.values { connection.socket = nil }
        connections = [:]
        connectionTokens = [:]
        hostStreams = [:]
        vsockCounters.active.store(0, ordering: .relaxed)
    }

    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    // MARK: Events

    /// How long the worker may sleep: until the nearest deadline, or forever.
    func waitTimeout(now: UInt64) -> Int32 {
        var nearest: UInt64?
        for connection in connections.values {
            if let deadline = connection.deadline { nearest = min(nearest ?? deadline, deadline) }
        }
        for stream in hostStreams.values { nearest = min(nearest ?? stream.deadline, stream.deadline) }
        guard let nearest else { return -1 }
        return nearest <= now ? 0 : Int32(clamping: (nearest - now) / 1_000_000 + 1)
    }

    /// Handles one epoll wake-up.
    func handle(_ events: [Epoll.Event], now: UInt64) {
        guard !broken else { return }
        do throws(VirtqueueError) {
            for event in events {
                switch event.token {
                case Token.receiveNotification:
                    consume(receiveNotification)
                case Token.transmitNotification:
                    consume(transmitNotification)
                    try processTransmit(now: now)
                case Token.kick:
                    _ = try? kick.consume()
                    try processTransmit(now: now)
                case Token.listener:
                    acceptHostConnections(now: now)
                case Token.stop:
                    break
                default:
                    handleSocketEvent(token: event.token, events: event.events, now: now)
                }
            }
            expire(now: now)
            try processReceive()
        } catch {
            markBroken(error)
        }
    }

    /// Waits once on the epoll set (at most `timeout` ms) and handles what
    /// is ready; for tests and fuzzing, which run without a worker thread.
    func poll(timeout: Int32) {
        let events = (try? epoll.wait(maxEvents: 64, timeout: timeout)) ?? []
        handle(events, now: Self.now())
    }

    func consume(_ notification: EventFD?) {
        if let count = try? notification?.consume() {
            counters.notifications.wrappingAdd(count, ordering: .relaxed)
        }
    }

    /// The driver broke a queue: report it once, close every host socket,
    /// and serve nothing until reset.
    func markBroken(_ error: VirtqueueError) {
        broken = true
        interrupt.reportDeviceError("virtio-vsock: \(error)")
        for descriptor in [receiveNotification?.descriptor.rawValue, transmitNotification?.descriptor.rawValue,
                           listener?.descriptor.rawValue].compactMap({ $0 }) {
            try? epoll.remove(descriptor)
        }
        for connection in connections.values {
            if let socket = connection.socket, connection.registeredEvents != 0 { try? epoll.remove(socket.rawValue) }
            connection.socket = nil
        }
        connections = [:]
        connectionTokens = [:]
        for stream in hostStreams.values { try? epoll.remove(stream.socket.rawValue) }
        hostStreams = [:]
        vsockCounters.active.store(0, ordering: .relaxed)
    }

    func allocateToken() -> UInt64 {
        defer { nextToken &+= 1 }
        return nextToken
    }

    // MARK: Host side: the listener and CONNECT lines

    /// Accepts pending host connections (a bounded number per wake-up; the
    /// listener stays readable for the rest).
    func acceptHostConnections(now: UInt64) {
        guard let listener else { return }
        for _ in 0..<16 {
            let accepted: OwnedFileDescriptor?
            do {
                accepted = try UnixSocket.accept(listener.descriptor)
            } catch {
                vsockCounters.count(vsockCounters.hostSocketErrors)
                return
            }
            guard let socket = accepted else { return }
            guard hostStreams.count < limits.pendingHostStreams, connections.count < limits.connections else {
                // Closing it at once tells the client no.
                vsockCounters.count(vsockCounters.hostConnectFailures)
                continue
            }
            let token = allocateToken()
            let edge = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
            guard (try? epoll.add(socket.rawValue, events: edge, token: token)) != nil else {
                vsockCounters.count(vsockCounters.hostSocketErrors)
                continue
            }
            hostStreams[token] = HostStream(socket: socket, deadline: now &+ limits.connectLineTimeoutMilliseconds * 1_000_000)
            // Bytes may have arrived before the registration.
            readConnectLine(token: token, now: now)
        }
    }

    /// Reads the CONNECT line of a host stream without consuming what
    /// follows it (peek, then take exactly the line). The stream is
    /// edge-triggered, so a partial line waits for more bytes.
    func readConnectLine(token: UInt64, now: UInt64) {
        guard let stream = hostStreams[token] else { return }
        let bytes: [UInt8]
        do {
            bytes = try UnixSocket.peek(stream.socket, count: HostConnectLine.maximumLength)
        } catch where error.errno == .wouldBlock {
            return
        } catch {
            dropHostStream(token)
            return
        }
        switch HostConnectLine.parse(bytes) {
        case .incomplete:
            // Zero bytes readable after an event: the client hung up.
            if bytes.isEmpty { dropHostStream(token) }
        case .invalid:
            dropHostStream(token)
        case let .connect(port, length):
            guard (try? UnixSocket.discard(stream.socket, count: length)) != nil else {
                dropHostStream(token)
                return
            }
            try? epoll.remove(stream.socket.rawValue)
            hostStreams[token] = nil
            openHostConnection(socket: stream.socket, guestPort: port, now: now)
        }
    }

    func dropHostStream(_ token: UInt64) {
        guard let stream = hostStreams.removeValue(forKey: token) else { return }
        try? epoll.remove(stream.socket.rawValue)
        vsockCounters.count(vsockCounters.hostConnectFailures)
    }

    /// A host client asked for guest port `guestPort`: a new connection
    /// whose REQUEST goes to the guest.
    func openHostConnection(socket: OwnedFileDescriptor, guestPort: UInt32, now: UInt64) {
        guard connections.count < limits.connections else {
            vsockCounters.count(vsockCounters.hostConnectFailures)
            return
        }
        var key: VsockConnectionKey?
        for _ in 0...limits.connections {
            lastHostPort = ((lastHostPort &+ 1) & ~(1 << 31)) | (1 << 30)
            let candidate = VsockConnectionKey(hostPort: lastHostPort, guestPort: guestPort)
            if connections[candidate] == nil {
                key = candidate
                break
            }
        }
        guard let key else {
            vsockCounters.count(vsockCounters.hostConnectFailures)
            return
        }
        // The guest's credit is unknown until it answers: 0 until then.
        let connection = VsockConnection(key: key, token: allocateToken(), socket: socket, hostInitiated: true,
                                         peerBufferAllocation: 0, peerForwardCount: 0, bufferSize: limits.bufferSize)
        connection.deadline = now &+ limits.connectTimeoutMilliseconds * 1_000_000
        add(connection)
        vsockCounters.count(vsockCounters.hostConnections)
    }

    func add(_ connection: VsockConnection) {
        connections[connection.key] = connection
        connectionTokens[connection.token] = connection.key
        vsockCounters.active.store(UInt64(connections.count), ordering: .relaxed)
        update(connection)
    }

    func remove(_ connection: VsockConnection) {
        if let socket = connection.socket, connection.registeredEvents != 0 { try? epoll.remove(socket.rawValue) }
        connection.registeredEvents = 0
        connection.socket = nil
        connections[connection.key] = nil
        connectionTokens[connection.token] = nil
        vsockCounters.count(vsockCounters.closed)
        vsockCounters.active.store(UInt64(connections.count), ordering: .relaxed)
    }

    /// After any change: epoll interest follows what the connection wants,
    /// and it joins the RX round-robin if it owes the guest a packet.
    func update(_ connection: VsockConnection) {
        let wanted = connection.wantedEvents
        if wanted != connection.registeredEvents, let socket = connection.socket {
            do {
                if wanted == 0 {
                    try epoll.remove(socket.rawValue)
                } else if connection.registeredEvents == 0 {
                    try epoll.add(socket.rawValue, events: wanted, token: connection.token)
                } else {
                    try epoll.modify(socket.rawValue, events: wanted, token: connection.token)
                }
                connection.registeredEvents = wanted
            } catch {
                vsockCounters.count(vsockCounters.hostSocketErrors)
                kill(connection)
                return
            }
        }
        if connection.hasReceiveWork && !connection.scheduled {
            connection.scheduled = true
            ready.append(connection.key)
        }
    }

    /// Tears a connection down: its host socket closes now, an RST goes to the guest.
    func kill(_ connection: VsockConnection) {
        if let socket = connection.socket, connection.registeredEvents != 0 { try? epoll.remove(socket.rawValue) }
        connection.registeredEvents = 0
        connection.kill()
        update(connection)
    }

    /// A connection's host socket is readable or writable (or hung up).
    func handleSocketEvent(token: UInt64, events: UInt32, now: UInt64) {
        if hostStreams[token] != nil {
            readConnectLine(token: token, now: now)
            return
        }
        guard let key = connectionTokens[token], let connection = connections[key] else { return }
        let failed = events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0
        if events & EPOLLIN.rawValue != 0 || (failed && connection.registeredEvents & EPOLLIN.rawValue != 0) {
            connection.hostReadable = true
        }
        if events & EPOLLOUT.rawValue != 0 || (failed && connection.registeredEvents & EPOLLOUT.rawValue != 0) {
            flush(connection)
        }
        update(connection)
    }

    /// Writes buffered guest data to the host socket.
    func flush(_ connection: VsockConnection) {
        guard let socket = connection.socket else { return }
        do {
            let sent = try connection.transmitBuffer.send(to: socket)
            connection.forwardCount &+= UInt32(truncatingIfNeeded: sent)
        } catch where error.errno == .wouldBlock {
            return
        } catch {
            vsockCounters.count(vsockCounters.hostSocketErrors)
            kill(connection)
            return
        }
        afterForwarding(connection)
    }

    /// Once guest data reached the host: advertise the freed credit when the
    /// guest's view is half a buffer behind, and finish half-closes once the
    /// buffer is empty.
    func afterForwarding(_ connection: VsockConnection) {
        if connection.forwardCount &- connection.advertisedForwardCount >= UInt32(limits.bufferSize / 4) {
            connection.pendingCreditUpdate = true
        }
        guard connection.transmitBuffer.isEmpty else { return }
        if connection.guestSendClosed, !connection.hostWriteShut, let socket = connection.socket {
            UnixSocket.shutdownWrite(socket)
            connection.hostWriteShut = true
        }
        if connection.state == .closing {
            // Everything the guest sent reached the host: done.
            connection.kill()
        }
    }

    /// Resets connections whose deadline passed; drops host streams that
    /// never wrote their CONNECT line.
    func expire(now: UInt64) {
        for connection in connections.values {
            guard let deadline = connection.deadline, deadline <= now else { continue }
            if connection.state == .connecting { vsockCounters.count(vsockCounters.connectTimeouts) }
            kill(connection)
        }
        for (token, stream) in hostStreams where stream.deadline <= now {
            dropHostStream(token)
        }
    }

    // MARK: TX: packets from the guest

    func processTransmit(now: UInt64) throws(VirtqueueError) {
        guard var queue = transmitQueue else { return }
        defer { transmitQueue = queue }
        var handled = 0
        while true {
            while let chain = try queue.popChain() {
                receiveFromGuest(chain, now: now)
                try queue.addUsed(head: chain.head, writtenLength: 0)
                counters.requests.wrappingAdd(1, ordering: .relaxed)
                handled += 1
                if handled >= limits.packetBudget {
                    // Let host sockets and RX have a turn; come straight back.
                    if try queue.shouldInterrupt() { interrupt.signalUsedBuffers(queue: Vsock.transmitQueue) }
                    try? kick.signal()
                    return
                }
            }
            if try queue.shouldInterrupt() { interrupt.signalUsedBuffers(queue: Vsock.transmitQueue) }
            if try !queue.enableNotifications() { return }
        }
    }

    /// One TX packet: validated, then routed to its connection, answered
    /// with RST, or dropped. The chain is always consumed.
    func receiveFromGuest(_ chain: DescriptorChain, now: UInt64) {
        vsockCounters.count(vsockCounters.packetsFromGuest)
        let packet: VsockTransmitPacket
        do {
            packet = try VsockTransmitPacket.parse(chain, memory: memory)
        } catch {
            vsockCounters.count(vsockCounters.malformedPackets)
            if case .shortHeader = error { return }
            // The header is readable, the payload is not usable: a connection
            // that lost data cannot go on.
            let header = readHeader(chain)
            if let header { refuse(header) }
            return
        }
        let header = packet.header
        let key = VsockConnectionKey(hostPort: header.destinationPort, guestPort: header.sourcePort)
        guard header.type == Vsock.streamType, header.sourceCID == guestCID, header.destinationCID == Vsock.hostCID,
              let operation = header.operation else {
            vsockCounters.count(vsockCounters.malformedPackets)
            refuse(header)
            return
        }
        guard let connection = connections[key] else {
            switch operation {
            case .request: acceptGuestConnection(header, now: now)
            case .reset: break
            default:
                vsockCounters.count(vsockCounters.unknownConnectionPackets)
                queueReset(key)
            }
            return
        }
        // Every packet carries the guest's credit.
        connection.peerBufferAllocation = header.bufferAllocation
        connection.peerForwardCount = header.forwardCount
        if connection.peerCredit > 0 { connection.creditRequested = false }
        switch operation {
        case .reset:
            vsockCounters.count(vsockCounters.resetsFromGuest)
            remove(connection)
            return
        case .request:
            // A second REQUEST for a live connection: the guest lost track of it.
            kill(connection)
        case .response:
            if connection.state == .connecting {
                establishHostConnection(connection)
            }
        case .readWrite:
            if connection.transmitOpen, header.length > 0 {
                forward(packet, to: connection)
            }
        case .shutdown:
            shutdownFromGuest(header.flags, connection: connection, now: now)
        case .creditUpdate:
            break
        case .creditRequest:
            connection.pendingCreditUpdate = true
        }
        update(connection)
    }

    /// The header of a chain whose payload is unusable, if it has one.
    func readHeader(_ chain: DescriptorChain) -> VsockHeader? {
        var reader = ChainReader(memory: memory, buffers: chain.readable)
        guard let bytes = try? reader.readBytes(count: VsockHeader.size) else { return nil }
        return VsockHeader(bytes: bytes)
    }

    /// Answers a packet that cannot be served with RST (never an RST with an
    /// RST), resetting the connection it names if there is one.
    func refuse(_ header: VsockHeader) {
        guard header.operation != .reset else { return }
        let key = VsockConnectionKey(hostPort: header.destinationPort, guestPort: header.sourcePort)
        if header.sourceCID == guestCID, let connection = connections[key] {
            kill(connection)
        } else {
            queueReset(key)
        }
    }

    func queueReset(_ key: VsockConnectionKey) {
        guard pendingResets.count < limits.pendingResets else {
            vsockCounters.count(vsockCounters.droppedResets)
            return
        }
        pendingResets.append(key)
    }

    /// A guest REQUEST to host port P: connect to `<uds_path>_P`, or RST.
    func acceptGuestConnection(_ header: VsockHeader, now: UInt64) {
        let key = VsockConnectionKey(hostPort: header.destinationPort, guestPort: header.sourcePort)
        guard connections.count < limits.connections, let listener else {
            vsockCounters.count(vsockCounters.guestConnectFailures)
            queueReset(key)
            return
        }
        let socket: OwnedFileDescriptor
        do {
            socket = try UnixSocket.connect(path: "\(listener.path)_\(header.destinationPort)")
        } catch {
            vsockCounters.count(vsockCounters.guestConnectFailures)
            queueReset(key)
            return
        }
        let connection = VsockConnection(key: key, token: allocateToken(), socket: socket, hostInitiated: false,
                                         peerBufferAllocation: header.bufferAllocation, peerForwardCount: header.forwardCount,
                                         bufferSize: limits.bufferSize)
        add(connection)
        vsockCounters.count(vsockCounters.guestConnections)
    }

    /// The guest accepted a host-initiated connection: tell the host client.
    func establishHostConnection(_ connection: VsockConnection) {
        connection.state = .established
        connection.deadline = nil
        guard let socket = connection.socket else { return }
        let acknowledgement = HostConnectLine.acknowledgement(hostPort: connection.key.hostPort)
        // SAFETY: the bytes are used only by this send.
        let sent = acknowledgement.withUnsafeBytes { raw in Result { () throws(SystemCallError) in try UnixSocket.send(socket, bytes: raw) } }
        guard case let .success(count) = sent, count == acknowledgement.count else {
            // A fresh socket that cannot take a dozen bytes is broken.
            vsockCounters.count(vsockCounters.hostSocketErrors)
            kill(connection)
            return
        }
        vsockCounters.count(vsockCounters.established)
    }

    /// Guest data for the host: straight to the socket, the rest into the
    /// connection's buffer. More than the credit we gave resets it.
    func forward(_ packet: VsockTransmitPacket, to connection: VsockConnection) {
        let length = Int(packet.header.length)
        guard length <= connection.transmitBuffer.free else {
            vsockCounters.count(vsockCounters.creditViolations)
            kill(connection)
            return
        }
        guard let socket = connection.socket else { return }
        counters.bytesFromGuest.wrappingAdd(UInt64(length), ordering: .relaxed)
        var sent = 0
        if connection.transmitBuffer.isEmpty {
            let result = Result { () throws(GuestMemoryError) in
                try withIOVectors(memory: memory, buffers: packet.payload.prefix(maximumIOVectors)) { vectors in
                    Result { () throws(SystemCallError) in try UnixSocket.send(socket, vectors) }
                }
            }
            switch result {
            case let .success(.success(count)):
                sent = count
            case let .success(.failure(error)) where error.errno == .wouldBlock:
                sent = 0
            default:
                vsockCounters.count(vsockCounters.hostSocketErrors)
                kill(connection)
                return
            }
            connection.forwardCount &+= UInt32(truncatingIfNeeded: sent)
        }
        if sent < length {
            do {
                try connection.transmitBuffer.append(memory: memory, buffers: dropFirst(sent, of: packet.payload))
            } catch {
                vsockCounters.count(vsockCounters.hostSocketErrors)
                kill(connection)
                return
            }
        }
        afterForwarding(connection)
    }

    /// VIRTIO_VSOCK_OP_SHUTDOWN: the guest's promises only accumulate.
    func shutdownFromGuest(_ flags: UInt32, connection: VsockConnection, now: UInt64) {
        guard connection.state == .established || connection.state == .closing else { return }
        if flags & Vsock.shutdownReceive != 0 { connection.guestReceiveClosed = true }
        if flags & Vsock.shutdownSend != 0 { connection.guestSendClosed = true }
        if connection.guestSendClosed && connection.guestReceiveClosed {
            // The guest is done: deliver what it sent, then RST.
            connection.state = .closing
            connection.hostReadable = false
            if connection.transmitBuffer.isEmpty {
                connection.kill()
            } else if connection.deadline == nil {
                connection.deadline = now &+ limits.drainTimeoutMilliseconds * 1_000_000
            }
        } else if connection.guestSendClosed {
            afterForwarding(connection)
        }
    }

    // MARK: RX: packets to the guest

    var hasReceiveWork: Bool { !pendingResets.isEmpty || !ready.isEmpty }

    /// Fills RX chains with pending packets, connections taking turns.
    func processReceive() throws(VirtqueueError) {
        guard var queue = receiveQueue else { return }
        defer { receiveQueue = queue }
        var delivered = 0
        var budget = limits.packetBudget
        while hasReceiveWork {
            guard budget > 0 else {
                try? kick.signal()
                break
            }
            budget -= 1
            guard let chain = try takeChain(&queue) else {
                // Ask for a notification, then look once more.
                if try queue.enableNotifications() { continue }
                receiveStalled = true
                break
            }
            if receiveStalled {
                receiveStalled = false
                try queue.disableNotifications()
            }
            let written: UInt32?
            if let key = pendingResets.popFirst() {
                let header = VsockHeader(operation: .reset, sourceCID: Vsock.hostCID, destinationCID: guestCID,
                                         sourcePort: key.hostPort, destinationPort: key.guestPort)
                written = try writeControl(header, into: chain)
                vsockCounters.count(vsockCounters.resetsToGuest)
            } else if let key = ready.popFirst(), let connection = connections[key] {
                connection.scheduled = false
                written = try nextPacket(connection, into: chain)
                if connection.state == .killed && !connection.pendingReset {
                    remove(connection)
                } else {
                    update(connection)
                }
            } else {
                written = nil
            }
            guard let written else { continue }
            spareChain = nil
            try queue.addUsed(head: chain.head, writtenLength: written)
            vsockCounters.count(vsockCounters.packetsToGuest)
            counters.requests.wrappingAdd(1, ordering: .relaxed)
            delivered += 1
        }
        if delivered > 0 || refusedChains > 0, try queue.shouldInterrupt() { interrupt.signalUsedBuffers(queue: Vsock.receiveQueue) }
        refusedChains = 0
    }

    /// The spare chain, or the next usable one from the ring. Chains with
    /// device-readable buffers or no room for a header go back empty.
    func takeChain(_ queue: inout Virtqueue) throws(VirtqueueError) -> DescriptorChain? {
        if let spareChain { return spareChain }
        while let chain = try queue.popChain() {
            guard chain.readable.isEmpty, chain.writableLength >= UInt64(VsockHeader.size) else {
                vsockCounters.count(vsockCounters.malformedPackets)
                try queue.addUsed(head: chain.head, writtenLength: 0)
                refusedChains += 1
                continue
            }
            spareChain = chain
            return chain
        }
        return nil
    }

    /// The header our side sends on `connection`, carrying our credit.
    func header(_ operation: VsockOperation, for connection: VsockConnection, length: UInt32 = 0, flags: UInt32 = 0) -> VsockHeader {
        VsockHeader(operation: operation, sourceCID: Vsock.hostCID, destinationCID: guestCID,
                    sourcePort: connection.key.hostPort, destinationPort: connection.key.guestPort,
                    length: length, flags: flags, bufferAllocation: UInt32(limits.bufferSize), forwardCount: connection.forwardCount)
    }

    func writeControl(_ header: VsockHeader, into chain: DescriptorChain) throws(VirtqueueError) -> UInt32 {
        var writer = ChainWriter(memory: memory, buffers: chain.writable)
        try VirtqueueError.guarding { () throws(GuestMemoryError) in _ = try writer.write(bytes: header.bytes) }
        return UInt32(VsockHeader.size)
    }

    /// The connection's next packet for the guest, written into `chain`;
    /// nil if it turned out to have nothing (the chain stays spare).
    func nextPacket(_ connection: VsockConnection, into chain: DescriptorChain) throws(VirtqueueError) -> UInt32? {
        func control(_ operation: VsockOperation, flags: UInt32 = 0) throws(VirtqueueError) -> UInt32 {
            connection.pendingCreditUpdate = false
            connection.advertisedForwardCount = connection.forwardCount
            return try writeControl(header(operation, for: connection, flags: flags), into: chain)
        }
        if connection.pendingReset {
            connection.pendingReset = false
            vsockCounters.count(vsockCounters.resetsToGuest)
            return try control(.reset)
        }
        if connection.pendingResponse {
            connection.pendingResponse = false
            connection.state = .established
            vsockCounters.count(vsockCounters.established)
            return try control(.response)
        }
        if connection.pendingRequest {
            connection.pendingRequest = false
            return try control(.request)
        }
        if connection.receiveOpen, connection.hostReadable {
            let credit = connection.peerCredit
            if credit == 0 {
                if !connection.creditRequested {
                    connection.creditRequested = true
                    return try control(.creditRequest)
                }
            } else if let written = try readData(connection, credit: credit, into: chain) {
                return written
            }
        }
        if connection.pendingCreditUpdate {
            return try control(.creditUpdate)
        }
        return nil
    }

    /// Reads host data straight into the chain after the header room: an RW
    /// packet, a SHUTDOWN at end of file, an RST on a socket error, or nil
    /// when the socket is drained.
    func readData(_ connection: VsockConnection, credit: UInt32, into chain: DescriptorChain) throws(VirtqueueError) -> UInt32? {
        guard let socket = connection.socket else { return nil }
        var writer = ChainWriter(memory: memory, buffers: chain.writable)
        writer.advance(by: UInt64(VsockHeader.size))
        let room = min(writer.remaining, UInt64(credit), UInt64(Vsock.maximumPayload))
        guard room > 0 else {
            // A chain with room for a header only: use it for credit news.
            connection.pendingCreditUpdate = true
            return nil
        }
        let buffers = trim(writer.remainingBuffers, to: room)
        let result = try VirtqueueError.guarding { () throws(GuestMemoryError) in
            try withIOVectors(memory: memory, buffers: buffers.prefix(maximumIOVectors)) { vectors in
                Result { () throws(SystemCallError) in try UnixSocket.read(socket, into: vectors) }
            }
        }
        let header: VsockHeader
        switch result {
        case let .success(count) where count > 0:
            connection.sentToGuest &+= UInt32(truncatingIfNeeded: count)
            counters.bytesToGuest.wrappingAdd(UInt64(count), ordering: .relaxed)
            header = self.header(.readWrite, for: connection, length: UInt32(count))
        case .success:
            // End of file: the host will send no more; the guest may still.
            connection.hostReadable = false
            connection.hostSendClosed = true
            header = self.header(.shutdown, for: connection, flags: Vsock.shutdownSend)
        case let .failure(error) where error.errno == .wouldBlock:
            connection.hostReadable = false
            return nil
        case .failure:
            vsockCounters.count(vsockCounters.hostSocketErrors)
            connection.kill()
            connection.pendingReset = false
            vsockCounters.count(vsockCounters.resetsToGuest)
            header = self.header(.reset, for: connection)
        }
        connection.pendingCreditUpdate = false
        connection.advertisedForwardCount = connection.forwardCount
        var headerWriter = ChainWriter(memory: memory, buffers: chain.writable)
        try VirtqueueError.guarding { () throws(GuestMemoryError) in _ = try headerWriter.write(bytes: header.bytes) }
        return UInt32(VsockHeader.size) + header.length
    }
}

/// `buffers` without their first `count` bytes.
func dropFirst(_ count: Int, of buffers: [GuestBuffer]) -> [GuestBuffer] {
    var skip = UInt64(count)
    var result: [GuestBuffer] = []
    for buffer in buffers {
        if skip >= UInt64(buffer.length) {
            skip -= UInt64(buffer.length)
            continue
        }
        result.append(GuestBuffer(address: buffer.address + skip, length: buffer.length - UInt32(skip)))
        skip = 0
    }
    return result
}

/// A first-in first-out queue with amortised O(1) removal from the front.
struct FIFO<Element> {
    private var elements: [Element] = []
    private var head = 0

    var count: Int { elements.count - head }
    var isEmpty: Bool { head == elements.count }

    mutating func append(_ element: Element) { elements.append(element) }

    mutating func popFirst() -> Element? {
        guard head < elements.count else { return nil }
        let element = elements[head]
        head += 1
        if head > 64 && head * 2 > elements.count {
            elements.removeFirst(head)
            head = 0
        }
        return element
    }
}
