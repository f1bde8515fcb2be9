import Foundation
import Glibc
import GuestMemory
import HostSystem
import Testing
import Virtio
@testable import VirtioVsock

@Suite("virtio-vsock muxer: connections, flow control, hostile packets", .serialized)
struct VsockMuxerTests {
    typealias Harness = VsockHarness

    /// A guest-initiated connection to host port `hostPort`, accepted on the host.
    func openGuestConnection(_ harness: Harness, guestPort: UInt32 = 1000, hostPort: UInt32 = 52,
                             bufferAllocation: UInt32 = 256 * 1024) throws -> Int32 {
        if harness.hostListeners[hostPort] == nil { try harness.listenOnHost(port: hostPort) }
        harness.send(harness.guestHeader(.request, guestPort: guestPort, hostPort: hostPort, bufferAllocation: bufferAllocation))
        let answer = harness.receivedPackets()
        try #require(answer.count == 1)
        #expect(answer[0].header.operation == .response)
        #expect(answer[0].header.sourcePort == hostPort && answer[0].header.destinationPort == guestPort)
        #expect(answer[0].header.sourceCID == 2 && answer[0].header.destinationCID == Harness.guestCID)
        #expect(answer[0].header.bufferAllocation == UInt32(harness.muxer.limits.bufferSize))
        let host = try #require(harness.acceptOnHost(port: hostPort))
        return host
    }

    @Test("the configuration space holds guest_cid as a little-endian u64; writes are ignored")
    func configurationSpace() throws {
        let path = "/tmp/swiftlet-vsock-config-\(getpid())"
        let device = try VirtioVsockDevice(guestCID: 3, listener: VsockHostListener.acquire(path: path))
        #expect(device.udsPath == path)
        var bytes = [UInt8](repeating: 0xAA, count: 12)
        bytes.withUnsafeMutableBytes { device.readConfiguration(offset: 0, into: $0) }
        #expect(bytes == [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(device.deviceType.rawValue == 19)
        #expect(device.queueMaximumSizes.count == 3)
        #expect(throws: VsockError.invalidGuestCID(2)) { try VirtioVsockDevice(guestCID: 2, listener: VsockHostListener.acquire(path: path)) }
    }

    @Test("guest-initiated: REQUEST reaches <uds>_<port>, RESPONSE comes back, data flows both ways with our credit in every header")
    func guestInitiated() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(8)
        let host = try openGuestConnection(harness)
        defer { close(host) }
        #expect(harness.vsockCounters.guestConnections.load(ordering: .relaxed) == 1)

        // Guest to host.
        let outbound = pattern(3000, seed: 1)
        harness.send(harness.guestHeader(.readWrite, guestPort: 1000, hostPort: 52), payload: outbound)
        var received: [UInt8] = []
        while received.count < outbound.count, let chunk = harness.read(host), !chunk.isEmpty { received += chunk }
        #expect(received == outbound)

        // Host to guest: the RW packet carries fwd_cnt = what reached the host.
        let inbound = pattern(1500, seed: 2)
        harness.write(host, inbound)
        var delivered: [UInt8] = []
        harness.pump(until: {
            for packet in harness.receivedPackets() {
                #expect(packet.header.operation == .readWrite)
                #expect(packet.header.forwardCount == 3000)
                delivered += packet.payload
            }
            return delivered.count >= inbound.count
        })
        #expect(delivered == inbound)
        #expect(harness.counters.bytesFromGuest.load(ordering: .relaxed) == 3000)
        #expect(harness.counters.bytesToGuest.load(ordering: .relaxed) == 1500)
    }

    @Test("guest REQUEST with nothing listening at <uds>_<port> gets RST")
    func guestConnectRefused() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(4)
        harness.send(harness.guestHeader(.request, guestPort: 1000, hostPort: 9999))
        let answer = harness.receivedPackets()
        #expect(answer.count == 1 && answer.first?.header.operation == .reset)
        #expect(answer.first?.header.sourcePort == 9999 && answer.first?.header.destinationPort == 1000)
        #expect(harness.vsockCounters.guestConnectFailures.load(ordering: .relaxed) == 1)
        #expect(harness.muxer.connections.isEmpty)
    }

    /// A host client that wrote `CONNECT port`; returns it and the guest's REQUEST.
    func openHostConnection(_ harness: Harness, port: UInt32 = 52, trailing: [UInt8] = []) throws -> (Int32, VsockHeader) {
        let client = try harness.connectToDevice()
        harness.write(client, Array("CONNECT \(port)\n".utf8) + trailing)
        var request: VsockHeader?
        harness.pump(until: {
            request = harness.receivedPackets().first?.header
            return request != nil
        })
        let header = try #require(request)
        #expect(header.operation == .request)
        #expect(header.destinationPort == port)
        #expect(header.sourcePort >= 1 << 30 && header.sourcePort < 1 << 31)
        return (client, header)
    }

    @Test("host-initiated: CONNECT <port> sends REQUEST; the guest's RESPONSE makes OK <port> and bytes after the line go to the guest")
    func hostInitiated() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(8)
        let (client, request) = try openHostConnection(harness, trailing: Array("early".utf8))
        defer { close(client) }
        harness.send(harness.guestHeader(.response, guestPort: 52, hostPort: request.sourcePort))
        let ok = harness.read(client) ?? []
        #expect(String(decoding: ok, as: UTF8.self) == "OK \(request.sourcePort)\n")
        var delivered: [UInt8] = []
        harness.pump(until: {
            delivered += harness.receivedPackets().flatMap(\.payload)
            return delivered.count >= 5
        })
        #expect(String(decoding: delivered, as: UTF8.self) == "early")
        harness.send(harness.guestHeader(.readWrite, guestPort: 52, hostPort: request.sourcePort), payload: Array("reply".utf8))
        #expect(String(decoding: harness.read(client) ?? [], as: UTF8.self) == "reply")
        #expect(harness.vsockCounters.established.load(ordering: .relaxed) == 1)
    }

    @Test("host-initiated: the guest's RST closes the host socket; no answer in time resets and closes it")
    func hostInitiatedRefused() throws {
        var limits = VsockMuxer.Limits()
        limits.connectTimeoutMilliseconds = 50
        let harness = try Harness(limits: limits)
        harness.postReceiveBuffers(8)
        let (first, request) = try openHostConnection(harness)
        defer { close(first) }
        harness.send(harness.guestHeader(.reset, guestPort: 52, hostPort: request.sourcePort))
        #expect(harness.read(first) == nil, "end of file after the guest's RST")

        let (second, _) = try openHostConnection(harness, port: 53)
        defer { close(second) }
        var reset = false
        harness.pump(until: {
            reset = reset || harness.receivedPackets().contains { $0.header.operation == .reset && $0.header.destinationPort == 53 }
            return reset
        })
        #expect(reset, "the guest is told with RST")
        #expect(harness.read(second) == nil, "the host client sees end of file")
        #expect(harness.vsockCounters.connectTimeouts.load(ordering: .relaxed) == 1)
        #expect(harness.muxer.connections.isEmpty)
    }

    @Test("bad CONNECT lines, silence and hang-ups close the host socket without bothering the guest")
    func badConnectLines() throws {
        var limits = VsockMuxer.Limits()
        limits.connectLineTimeoutMilliseconds = 50
        let harness = try Harness(limits: limits)
        harness.postReceiveBuffers(4)
        for line in ["HELLO 5\n", String(repeating: "x", count: 40), "CONNECT 99999999999\n"] {
            let client = try harness.connectToDevice()
            harness.write(client, Array(line.utf8))
            var closed = false
            harness.pump(until: {
                closed = harness.read(client, milliseconds: 0) == nil
                return closed
            })
            #expect(closed, "\(line)")
            close(client)
        }
        let silent = try harness.connectToDevice()
        harness.write(silent, Array("CONN".utf8))
        var closed = false
        harness.pump(until: {
            closed = harness.read(silent, milliseconds: 0) == nil
            return closed
        })
        #expect(closed, "a partial line times out")
        close(silent)
        #expect(harness.receivedPackets().isEmpty)
        #expect(harness.vsockCounters.hostConnectFailures.load(ordering: .relaxed) == 4)
        #expect(harness.muxer.hostStreams.isEmpty)
    }

    @Test("a line split across writes is put together; more pending host streams than the limit are refused")
    func connectLineLimits() throws {
        var limits = VsockMuxer.Limits()
        limits.pendingHostStreams = 2
        let harness = try Harness(limits: limits)
        harness.postReceiveBuffers(8)
        let client = try harness.connectToDevice()
        defer { close(client) }
        harness.write(client, Array("CONN".utf8))
        harness.pump(rounds: 3)
        harness.write(client, Array("ECT 77\n".utf8))
        var request: VsockHeader?
        harness.pump(until: {
            request = harness.receivedPackets().first?.header
            return request != nil
        })
        #expect(request?.operation == .request && request?.destinationPort == 77)

        let waiting = try (0..<3).map { _ in try harness.connectToDevice() }
        defer { waiting.forEach { close($0) } }
        harness.pump(rounds: 5)
        #expect(harness.muxer.hostStreams.count == 2)
        #expect(waiting.contains { harness.read($0, milliseconds: 100) == nil }, "the third was closed")
    }

    @Test("credit: the device sends no more than the guest's buf_alloc, then CREDIT_REQUEST; a CREDIT_UPDATE lets more through")
    func guestCredit() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(16)
        let host = try openGuestConnection(harness, bufferAllocation: 1000)
        defer { close(host) }
        harness.write(host, pattern(5000))
        var data: [UInt8] = []
        var creditRequests = 0
        harness.pump(until: {
            for packet in harness.receivedPackets() {
                if packet.header.operation == .readWrite { data += packet.payload }
                if packet.header.operation == .creditRequest { creditRequests += 1 }
            }
            return creditRequests > 0
        })
        #expect(data.count == 1000, "exactly the credit")
        #expect(creditRequests == 1)
        harness.pump(rounds: 5)
        #expect(harness.receivedPackets().isEmpty, "nothing more, and no repeated CREDIT_REQUEST")

        harness.send(harness.guestHeader(.creditUpdate, guestPort: 1000, hostPort: 52, bufferAllocation: 1000, forwardCount: 1000))
        harness.pump(until: {
            data += harness.receivedPackets().filter { $0.header.operation == .readWrite }.flatMap(\.payload)
            return data.count >= 2000
        })
        #expect(data == Array(pattern(5000)[..<2000]))
    }

    @Test("a huge buf_alloc is just credit: packets stay within the RX buffer and 64 KiB")
    func hugeBufferAllocation() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(64)
        let host = try openGuestConnection(harness, bufferAllocation: .max)
        defer { close(host) }
        harness.write(host, pattern(100_000))
        var data: [UInt8] = []
        harness.pump(until: {
            for packet in harness.receivedPackets() {
                #expect(packet.payload.count <= 4096)
                data += packet.payload
            }
            return data.count >= 100_000
        })
        #expect(data == pattern(100_000))
    }

    @Test("guest CREDIT_REQUEST is answered with CREDIT_UPDATE; forwarding a quarter buffer sends one unasked")
    func ourCredit() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(16)
        let host = try openGuestConnection(harness)
        defer { close(host) }
        harness.send(harness.guestHeader(.creditRequest, guestPort: 1000, hostPort: 52))
        let update = harness.receivedPackets()
        #expect(update.count == 1 && update.first?.header.operation == .creditUpdate)
        #expect(update.first?.header.forwardCount == 0 && update.first?.header.bufferAllocation == 65536)

        for _ in 0..<4 { harness.send(harness.guestHeader(.readWrite, guestPort: 1000, hostPort: 52), payload: pattern(4096)) }
        let packets = harness.receivedPackets()
        #expect(packets.contains { $0.header.operation == .creditUpdate && $0.header.forwardCount == 16384 }, "\(packets.map(\.header))")
    }

    @Test("a slow host reader: its connection buffers up to the credit, another stream still flows, and the guest exceeding the credit is reset")
    func slowReader() throws {
        var limits = VsockMuxer.Limits()
        limits.bufferSize = 8192
        let harness = try Harness(limits: limits)
        harness.postReceiveBuffers(32)
        let slow = try openGuestConnection(harness, guestPort: 1000, hostPort: 52)
        let fast = try openGuestConnection(harness, guestPort: 1001, hostPort: 53)
        defer { close(slow); close(fast) }
        // Fill the slow reader's socket until data stays in the device's buffer.
        var sent = 0
        while harness.muxer.connections[VsockConnectionKey(hostPort: 52, guestPort: 1000)]?.transmitBuffer.isEmpty == true && sent < 64 << 20 {
            harness.send(harness.guestHeader(.readWrite, guestPort: 1000, hostPort: 52), payload: pattern(4096))
            sent += 4096
        }
        let slowConnection = try #require(harness.muxer.connections[VsockConnectionKey(hostPort: 52, guestPort: 1000)])
        #expect(!slowConnection.transmitBuffer.isEmpty)
        #expect(slowConnection.registeredEvents & 0x004 != 0, "waits for the socket to drain")

        // The other stream is not held up.
        harness.send(harness.guestHeader(.readWrite, guestPort: 1001, hostPort: 53), payload: Array("still flowing".utf8))
        #expect(String(decoding: harness.read(fast) ?? [], as: UTF8.self) == "still flowing")

        // Past the credit: reset, and the host socket closes.
        for _ in 0..<3 { harness.send(harness.guestHeader(.readWrite, guestPort: 1000, hostPort: 52), payload: pattern(4096)) }
        #expect(harness.vsockCounters.creditViolations.load(ordering: .relaxed) == 1)
        harness.postReceiveBuffers(64)  // credit updates used up the first ones
        #expect(harness.receivedPackets().contains { $0.header.operation == .reset && $0.header.destinationPort == 1000 })
        #expect(harness.muxer.connections[VsockConnectionKey(hostPort: 52, guestPort: 1000)] == nil)
    }

    @Test("the slow reader catches up: buffered data is flushed in order and credit is advertised")
    func drain() throws {
        var limits = VsockMuxer.Limits()
        limits.bufferSize = 16384
        let harness = try Harness(limits: limits)
        harness.postReceiveBuffers(64)
        let host = try openGuestConnection(harness)
        defer { close(host) }
        var sent: [UInt8] = []
        var forwarded: UInt32 = 0
        // Keep within the credit the device advertised, as a driver must.
        for round in 0..<200 {
            let chunk = pattern(4096, seed: UInt8(truncatingIfNeeded: round))
            let connection = try #require(harness.muxer.connections[VsockConnectionKey(hostPort: 52, guestPort: 1000)])
            if connection.transmitBuffer.free < chunk.count { break }
            harness.send(harness.guestHeader(.readWrite, guestPort: 1000, hostPort: 52), payload: chunk)
            sent += chunk
        }
        var received: [UInt8] = []
        harness.pump(until: {
            while let chunk = harness.read(host, milliseconds: 0), !chunk.isEmpty { received += chunk }
            for packet in harness.receivedPackets() { forwarded = max(forwarded, packet.header.forwardCount) }
            return received.count >= sent.count
        })
        #expect(received == sent)
        #expect(harness.muxer.connections.first?.value.transmitBuffer.isEmpty == true)
        #expect(forwarded > 0, "credit updates went out as the buffer drained")
    }

    @Test("SHUTDOWN from the guest: SEND half-closes the host socket; both flags reset the connection and close it")
    func guestShutdown() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(8)
        let host = try openGuestConnection(harness)
        defer { close(host) }
        harness.send(harness.guestHeader(.readWrite, guestPort: 1000, hostPort: 52), payload: Array("bye".utf8))
        harness.send(harness.guestHeader(.shutdown, guestPort: 1000, hostPort: 52, flags: Vsock.shutdownSend))
        #expect(String(decoding: harness.read(host) ?? [], as: UTF8.self) == "bye")
        #expect(harness.read(host) == nil, "the host reads end of file")
        // The host may still answer.
        harness.write(host, Array("answer".utf8))
        var answer: [UInt8] = []
        harness.pump(until: {
            answer += harness.receivedPackets().flatMap(\.payload)
            return answer.count >= 6
        })
        #expect(String(decoding: answer, as: UTF8.self) == "answer")
        harness.send(harness.guestHeader(.shutdown, guestPort: 1000, hostPort: 52, flags: Vsock.shutdownSend | Vsock.shutdownReceive))
        #expect(harness.receivedPackets().contains { $0.header.operation == .reset })
        #expect(harness.muxer.connections.isEmpty)
    }

    @Test("the host closing its side sends SHUTDOWN(SEND); the guest may still send")
    func hostShutdown() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(8)
        let host = try openGuestConnection(harness)
        defer { close(host) }
        harness.write(host, Array("last".utf8))
        shutdown(host, Int32(SHUT_WR))
        var packets: [(header: VsockHeader, payload: [UInt8])] = []
        harness.pump(until: {
            packets += harness.receivedPackets()
            return packets.contains { $0.header.operation == .shutdown }
        })
        #expect(packets.first?.header.operation == .readWrite && packets.first?.payload == Array("last".utf8))
        #expect(packets.last?.header.operation == .shutdown && packets.last?.header.flags == Vsock.shutdownSend)
        harness.send(harness.guestHeader(.readWrite, guestPort: 1000, hostPort: 52), payload: Array("after".utf8))
        #expect(String(decoding: harness.read(host) ?? [], as: UTF8.self) == "after")
    }

    @Test("hostile TX packets: data or SHUTDOWN without a connection, wrong CIDs, types and ops get RST; RST gets nothing")
    func resetCases() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(32)
        var cases: [VsockHeader] = [
            harness.guestHeader(.readWrite, guestPort: 5, hostPort: 6),
            harness.guestHeader(.shutdown, guestPort: 5, hostPort: 6),
            harness.guestHeader(.creditUpdate, guestPort: 5, hostPort: 6),
        ]
        var wrongSource = harness.guestHeader(.request, guestPort: 5, hostPort: 6)
        wrongSource.sourceCID = 7
        var wrongDestination = harness.guestHeader(.request, guestPort: 5, hostPort: 6)
        wrongDestination.destinationCID = 1
        var seqpacket = harness.guestHeader(.request, guestPort: 5, hostPort: 6)
        seqpacket.type = 2
        var badOperation = harness.guestHeader(.request, guestPort: 5, hostPort: 6)
        badOperation.rawOperation = 0
        cases += [wrongSource, wrongDestination, seqpacket, badOperation]
        for header in cases { harness.send(header) }
        let answers = harness.receivedPackets()
        #expect(answers.count == cases.count)
        #expect(answers.allSatisfy { $0.header.operation == .reset && $0.header.sourcePort == 6 && $0.header.destinationPort == 5 })
        #expect(harness.vsockCounters.malformedPackets.load(ordering: .relaxed) == 4)
        #expect(harness.vsockCounters.unknownConnectionPackets.load(ordering: .relaxed) == 3)
        harness.send(harness.guestHeader(.reset, guestPort: 5, hostPort: 6))
        #expect(harness.receivedPackets().isEmpty, "never an RST for an RST")
    }

    @Test("short headers and len beyond the chain are counted; a connection whose data was lost is reset")
    func malformedPackets() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(8)
        let host = try openGuestConnection(harness)
        defer { close(host) }
        let short = harness.transmit.allocate(20)
        harness.transmit.addChain([.init(address: short, length: 20, writable: false)])
        harness.kickTransmit()
        #expect(harness.receivedPackets().isEmpty)
        harness.send(harness.guestHeader(.readWrite, guestPort: 1000, hostPort: 52, length: 5000), payload: pattern(100))
        #expect(harness.receivedPackets().contains { $0.header.operation == .reset })
        #expect(harness.vsockCounters.malformedPackets.load(ordering: .relaxed) == 2)
        #expect(harness.read(host) == nil)
        #expect(harness.interrupt.errors.isEmpty, "packet errors do not break the queue")
    }

    @Test("a flood of REQUESTs with no RX buffers queues a bounded number of RSTs")
    func requestFlood() throws {
        var limits = VsockMuxer.Limits()
        limits.pendingResets = 16
        let harness = try Harness(limits: limits)
        for port in 0..<200 { harness.send(harness.guestHeader(.request, guestPort: UInt32(port), hostPort: 7777), notify: port % 50 == 49) }
        #expect(harness.muxer.pendingResets.count == 16)
        #expect(harness.vsockCounters.droppedResets.load(ordering: .relaxed) == 184)
        harness.postReceiveBuffers(64)
        #expect(harness.receivedPackets().count == 16)
        #expect(harness.muxer.connections.isEmpty)
    }

    @Test("many concurrent streams each keep their bytes in order")
    func manyStreams() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(200)
        try harness.listenOnHost(port: 52)
        var hosts: [UInt32: Int32] = [:]
        for port in UInt32(2000)..<2020 {
            hosts[port] = try openGuestConnection(harness, guestPort: port, hostPort: 52)
        }
        defer { hosts.values.forEach { close($0) } }
        for (port, host) in hosts { harness.write(host, pattern(6000, seed: UInt8(port & 0xFF))) }
        var streams: [UInt32: [UInt8]] = [:]
        harness.pump(until: {
            for packet in harness.receivedPackets() where packet.header.operation == .readWrite {
                streams[packet.header.destinationPort, default: []] += packet.payload
            }
            if harness.receive.usedIndex == harness.receive.availableIndex { harness.postReceiveBuffers(50) }
            return streams.values.reduce(0) { $0 + $1.count } >= 20 * 6000
        })
        for port in hosts.keys { #expect(streams[port] == pattern(6000, seed: UInt8(port & 0xFF)), "stream \(port)") }
        #expect(harness.vsockCounters.active.load(ordering: .relaxed) == 20)
    }

    @Test("RX chains with device-readable buffers or no room for a header go back empty and are counted")
    func unusableReceiveChains() throws {
        let harness = try Harness()
        let readable = harness.receive.allocate(4096)
        harness.receive.addChain([.init(address: readable, length: 4096, writable: false)])
        let tiny = harness.receive.allocate(16)
        harness.receive.addChain([.init(address: tiny, length: 16, writable: true)])
        harness.send(harness.guestHeader(.readWrite, guestPort: 1, hostPort: 2))  // an RST to deliver
        #expect(harness.receive.popUsed()?.length == 0)
        #expect(harness.receive.popUsed()?.length == 0)
        #expect(harness.vsockCounters.malformedPackets.load(ordering: .relaxed) == 2)
        harness.postReceiveBuffers(1)
        #expect(harness.receivedPackets().first?.header.operation == .reset)
    }

    @Test("a broken queue reports a device error, closes every host socket and serves nothing more")
    func brokenQueue() throws {
        let harness = try Harness()
        harness.postReceiveBuffers(4)
        let host = try openGuestConnection(harness)
        defer { close(host) }
        harness.transmit.writeDescriptor(0, address: 0x7FFF_0000_0000, length: 64, flags: 0, next: 0)
        harness.transmit.makeAvailable(0)
        harness.kickTransmit()
        #expect(harness.interrupt.errors.count == 1)
        #expect(harness.read(host) == nil)
        harness.send(harness.guestHeader(.request, guestPort: 9, hostPort: 52))
        #expect(harness.receivedPackets().isEmpty)
    }
}

@Suite("virtio-vsock device lifecycle", .serialized)
struct VsockDeviceLifecycleTests {
    @Test("activation starts a worker that serves the rings and the listener; reset closes host sockets, the listener stays")
    func activateAndReset() throws {
        let harness = try VsockHarness()
        let device = try VirtioVsockDevice(guestCID: 3, listener: harness.listener, limits: .init())
        harness.postReceiveBuffers(4, notify: false)
        let receiveNotification = try EventFD()
        let activation = VirtioActivation(memory: harness.memory, features: 0, queues: [
            VirtioQueueActivation(index: 0, queue: try harness.receive.deviceQueue(), notification: receiveNotification),
            VirtioQueueActivation(index: 1, queue: try harness.transmit.deviceQueue(), notification: try EventFD()),
        ], interrupt: harness.interrupt)
        try device.activate(activation)
        let client = try harness.connectToDevice()
        defer { close(client) }
        harness.write(client, Array("CONNECT 52\n".utf8))
        var request: VsockHeader?
        for _ in 0..<200 where request == nil {
            usleep(10_000)
            request = harness.receivedPackets().first?.header
        }
        #expect(request?.operation == .request && request?.destinationPort == 52)
        #expect(harness.interrupt.signalledQueues.contains(0))
        device.reset()
        #expect(harness.read(client) == nil, "reset closed the host socket")
        #expect(FileManager.default.fileExists(atPath: harness.listener.path))
        #expect(device.deviceCounters.contains { $0.name == "vsock_host_connections" && $0.value == 1 })
    }
}
