import LeanJSON
import Testing
@testable import MMDS

@Suite("MMDS network stack")
struct NetworkStackTests {
    static func stack(_ data: String = #"{"latest": {"meta-data": {"ami-id": "ami-12345678"}}, "big": "\#(String(repeating: "x", count: 5000))"}"#,
                      version: MMDSVersion = .v1) throws -> MMDSNetworkStack {
        let service = MetadataService()
        try service.put(JSONParser.parse(data))
        service.configure(version: version, imdsCompatible: false)
        return MMDSNetworkStack(address: .defaultMMDS, service: service)
    }

    @Test("Frames for MMDS are recognised by ARP target or IPv4 destination; others, VLAN-tagged and short frames are not")
    func classification() {
        let address = IPv4Address.defaultMMDS
        #expect(MMDSNetworkStack.isMetadataFrame(GuestPackets.arpRequest(for: address), address: address))
        #expect(!MMDSNetworkStack.isMetadataFrame(GuestPackets.arpRequest(for: IPv4Address(10, 0, 0, 1)), address: address))
        #expect(MMDSNetworkStack.isMetadataFrame(GuestPackets.tcp(sequence: 1, flags: 0x02), address: address))
        #expect(!MMDSNetworkStack.isMetadataFrame(GuestPackets.tcp(to: IPv4Address(10, 0, 0, 1), sequence: 1, flags: 0x02), address: address))
        var tagged = GuestPackets.tcp(sequence: 1, flags: 0x02)
        tagged.insert(contentsOf: [0x81, 0x00, 0x00, 0x05], at: 12)
        #expect(!MMDSNetworkStack.isMetadataFrame(tagged, address: address))
        #expect(!MMDSNetworkStack.isMetadataFrame(Array(GuestPackets.tcp(sequence: 1, flags: 0x02).prefix(30)), address: address))
        // A custom address is what counts.
        #expect(!MMDSNetworkStack.isMetadataFrame(GuestPackets.tcp(sequence: 1, flags: 0x02), address: IPv4Address(169, 254, 170, 2)))
    }

    @Test("An ARP request for the MMDS address gets one reply with MMDS's MAC; other ARP is dropped")
    func arp() throws {
        var stack = try Self.stack()
        stack.receive(frame: GuestPackets.arpRequest(for: .defaultMMDS), checksumOffloaded: false, now: 0)
        #expect(stack.hasFrameToSend)
        let next = stack.nextFrame(now: 0)
        let reply = try #require(next)
        #expect(Array(reply[0..<6]) == GuestPackets.guestMAC)
        #expect(Array(reply[6..<12]) == MMDSNetworkStack.macAddress)
        #expect(Array(reply[12..<14]) == [0x08, 0x06])
        #expect(Array(reply[20..<22]) == [0, 2], "an ARP reply")
        #expect(Array(reply[22..<28]) == MMDSNetworkStack.macAddress)
        #expect(Array(reply[28..<32]) == IPv4Address.defaultMMDS.octets)
        #expect(Array(reply[32..<38]) == GuestPackets.guestMAC)
        #expect(Array(reply[38..<42]) == GuestPackets.guestAddress.octets)
        let after = stack.nextFrame(now: 0)
        #expect(after == nil)
        // A reply (op 2) aimed at the address is taken off the wire but not answered.
        stack.receive(frame: GuestPackets.arpRequest(for: .defaultMMDS, operation: 2), checksumOffloaded: false, now: 0)
        #expect(!stack.hasFrameToSend)
    }

    @Test("Handshake: the SYN-ACK acknowledges the SYN, offers MSS 1460 and the request window, and goes back with TTL 1")
    func handshake() throws {
        var client = GuestClient(stack: try Self.stack())
        let connected = try client.connect(mss: 1460)
        let synAck = try #require(connected)
        #expect(synAck.acknowledgment == 1_000_001)
        #expect(synAck.mss == 1460)
        #expect(synAck.window == 4096)
        #expect(synAck.destinationMAC == GuestPackets.guestMAC)
        #expect(synAck.sourcePort == 80 && synAck.destinationPort == 40000)
        #expect(synAck.ttl == 1)
        let drained1 = try client.drain()
        #expect(drained1.isEmpty, "a bare ACK needs no answer")
        #expect(client.stack.connections.first?.state == .established)
        #expect(client.stack.service.counters.connectionsCreated.load(ordering: .relaxed) == 1)
    }

    @Test("A request split over several segments is answered once complete; Connection: close ends with FIN")
    func splitRequest() throws {
        var client = GuestClient(stack: try Self.stack())
        _ = try client.connect()
        client.write("GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n", chunk: 7)
        let (bytes, fin, _) = try client.readAll()
        let response = try #require(GuestClient.response(bytes))
        #expect(response.status == 200)
        #expect(response.body == "ami-12345678")
        #expect(response.headers["connection"] == "close")
        #expect(fin)
        // The guest's FIN completes the close and the connection is forgotten.
        client.send(GuestPackets.tcp(from: client.port, sequence: client.sequence, acknowledgment: client.serverNext, flags: 0x11))
        let last = try client.drain()
        #expect(last.count == 1 && last[0].ack && last[0].acknowledgment == client.sequence &+ 1)
        client.now += 3000
        client.stack.expireTimers(now: client.now)
        #expect(client.stack.connections.isEmpty)
    }

    @Test("A response is cut to the guest's MSS and never overruns its window; ACKs open the window again")
    func segmentation() throws {
        var client = GuestClient(stack: try Self.stack())
        client.window = 3000
        _ = try client.connect(mss: 1000)
        client.write("GET /big HTTP/1.1\r\n\r\n")
        let first = try client.drain()
        #expect(!first.isEmpty)
        #expect(first.allSatisfy { $0.payload.count <= 1000 })
        #expect(first.reduce(0) { $0 + $1.payload.count } <= 3000, "no more than the window in flight")
        // Acknowledge the first flight; the rest follows.
        client.serverNext &+= UInt32(first.reduce(0) { $0 + $1.payload.count })
        client.send(GuestPackets.tcp(from: client.port, sequence: client.sequence, acknowledgment: client.serverNext, flags: 0x10, window: client.window))
        let (bytes, fin, segments) = try client.readAll()
        #expect(!fin, "keep-alive: the connection stays open")
        #expect(segments.allSatisfy { $0.payload.count <= 1000 })
        let total = first.reduce(0) { $0 + $1.payload.count } + bytes.count
        let response = try #require(GuestClient.response(first.flatMap(\.payload) + bytes))
        #expect(response.status == 200)
        #expect(response.body.count == 5000)
        #expect(Int(response.headers["content-length"] ?? "") == 5000)
        #expect(total > 5000)
    }

    @Test("Without an MSS option the default 536 applies; a zero window stops data until the guest opens it")
    func zeroWindow() throws {
        var client = GuestClient(stack: try Self.stack())
        _ = try client.connect(mss: nil)
        client.window = 0
        client.write("GET /big HTTP/1.1\r\n\r\n")
        let acks = try client.drain()
        #expect(acks.allSatisfy { $0.payload.isEmpty }, "nothing sent into a zero window")
        client.window = 64240
        client.send(GuestPackets.tcp(from: client.port, sequence: client.sequence, acknowledgment: client.serverNext, flags: 0x10, window: client.window))
        let (bytes, _, segments) = try client.readAll()
        #expect(segments.allSatisfy { $0.payload.count <= 536 })
        #expect(GuestClient.response(bytes)?.body.count == 5000)
    }

    @Test("Keep-alive: two requests on one connection, the second after the first is acknowledged")
    func keepAlive() throws {
        var client = GuestClient(stack: try Self.stack())
        _ = try client.connect()
        client.write("GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\nGET /latest HTTP/1.1\r\n\r\n")
        let (bytes, _, _) = try client.readAll()
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.components(separatedBy: "HTTP/1.1 200 OK").count == 3, "two responses: \(text)")
        #expect(text.hasSuffix("meta-data/"))
    }

    @Test("Out-of-order data is dropped with a duplicate ACK; retransmitted data is acknowledged again")
    func ordering() throws {
        var client = GuestClient(stack: try Self.stack())
        _ = try client.connect()
        let expected = client.sequence
        client.send(GuestPackets.tcp(from: client.port, sequence: expected &+ 10, acknowledgment: client.serverNext, flags: 0x18, payload: Array("later".utf8)))
        let dup = try client.drain()
        #expect(dup.count == 1 && dup[0].acknowledgment == expected && dup[0].payload.isEmpty)
        client.write("GET /la")
        _ = try client.drain()
        // The same bytes again (our ACK was "lost"): acknowledged, not buffered twice.
        client.send(GuestPackets.tcp(from: client.port, sequence: expected, acknowledgment: client.serverNext, flags: 0x18, payload: Array("GET /la".utf8)))
        let drained2 = try client.drain()
        #expect(drained2.first?.acknowledgment == expected &+ 7)
        client.write("test HTTP/1.1\r\n\r\n")
        let (bytes, _, _) = try client.readAll()
        #expect(GuestClient.response(bytes)?.body == "meta-data/")
    }

    @Test("An unanswered response is sent again after the retransmission timeout, and after three duplicate ACKs")
    func retransmission() throws {
        var client = GuestClient(stack: try Self.stack())
        _ = try client.connect()
        client.write("GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n")
        let first = try client.drain().filter { !$0.payload.isEmpty }
        #expect(first.count == 1)
        // Nothing acknowledged: after 500 ms the same bytes come again.
        client.now += 499
        client.stack.expireTimers(now: client.now)
        let drained3 = try client.drain()
        #expect(drained3.filter { !$0.payload.isEmpty }.isEmpty)
        client.now += 1
        client.stack.expireTimers(now: client.now)
        let again = try client.drain().filter { !$0.payload.isEmpty }
        #expect(again.map(\.payload) == first.map(\.payload))
        #expect(again.first?.sequence == first.first?.sequence)
        // Three duplicate ACKs (each unchanged) rewind as well.
        for _ in 0..<3 {
            client.send(GuestPackets.tcp(from: client.port, sequence: client.sequence, acknowledgment: client.serverNext, flags: 0x10, window: client.window))
        }
        let drained4 = try client.drain()
        #expect(drained4.filter { !$0.payload.isEmpty }.first?.sequence == first.first?.sequence)
    }

    @Test("A connection that never gets its data acknowledged gives up with RST after its retries")
    func givesUp() throws {
        var client = GuestClient(stack: try Self.stack())
        _ = try client.connect()
        client.write("GET / HTTP/1.1\r\n\r\n")
        var sawReset = false
        for _ in 0..<20 where !sawReset {
            client.now += 10_000
            client.stack.expireTimers(now: client.now)
            sawReset = try client.drain().contains { $0.rst }
        }
        #expect(sawReset)
        #expect(client.stack.connections.isEmpty)
    }

    @Test("Segments to another port, or outside any connection, are answered with RST; a RST is never answered")
    func resets() throws {
        var client = GuestClient(stack: try Self.stack())
        client.send(GuestPackets.tcp(port: 8080, sequence: 5, flags: 0x02))
        let refused = try client.drain()
        #expect(refused.count == 1 && refused[0].rst && refused[0].ack && refused[0].acknowledgment == 6)
        client.send(GuestPackets.tcp(sequence: 9, acknowledgment: 77, flags: 0x10))
        let stray = try client.drain()
        #expect(stray.count == 1 && stray[0].rst && stray[0].sequence == 77)
        client.send(GuestPackets.tcp(sequence: 9, flags: 0x04))
        let drained5 = try client.drain()
        #expect(drained5.isEmpty)
        #expect(client.stack.connections.isEmpty)
    }

    @Test("The guest's RST inside the window ends the connection; one outside it is ignored")
    func guestReset() throws {
        var client = GuestClient(stack: try Self.stack())
        _ = try client.connect()
        client.send(GuestPackets.tcp(from: client.port, sequence: client.sequence &+ 100_000, flags: 0x04))
        #expect(client.stack.connections.count == 1)
        client.send(GuestPackets.tcp(from: client.port, sequence: client.sequence, flags: 0x04))
        #expect(client.stack.connections.isEmpty)
        #expect(client.stack.service.counters.connectionsDestroyed.load(ordering: .relaxed) == 1)
    }

    @Test("Bad IPv4 or TCP checksums are dropped and counted; NEEDS_CSUM frames skip the TCP check")
    func checksums() throws {
        var client = GuestClient(stack: try Self.stack())
        client.send(GuestPackets.tcp(sequence: 1, flags: 0x02, corruptTCP: true))
        client.send(GuestPackets.tcp(sequence: 1, flags: 0x02, corruptIP: true))
        let drained6 = try client.drain()
        #expect(drained6.isEmpty)
        #expect(client.stack.connections.isEmpty)
        #expect(client.stack.service.counters.interceptedErrors.load(ordering: .relaxed) == 2)
        client.send(GuestPackets.tcp(sequence: 1, flags: 0x02, corruptTCP: true), offloaded: true)
        #expect(client.stack.connections.count == 1)
    }

    @Test("A request larger than 4 KiB resets the connection; the table holds at most 30 connections")
    func bounds() throws {
        var client = GuestClient(stack: try Self.stack())
        _ = try client.connect()
        client.write("GET /" + String(repeating: "a", count: 5000))
        let drained7 = try client.drain()
        #expect(drained7.contains { $0.rst })
        #expect(client.stack.connections.isEmpty)

        for port in UInt16(1000)..<1040 {
            client.send(GuestPackets.tcp(from: port, sequence: 1, flags: 0x02))
        }
        #expect(client.stack.connections.count == MMDSNetworkStack.maximumConnections)
        // Idle for 10 s, they may be replaced.
        client.now += 10_000
        client.send(GuestPackets.tcp(from: 2000, sequence: 1, flags: 0x02))
        #expect(client.stack.connections.contains { $0.peerPort == 2000 })
        #expect(client.stack.connections.count == MMDSNetworkStack.maximumConnections)
    }

    @Test("A request with a body gets 400 and the connection closes")
    func requestWithBody() throws {
        var client = GuestClient(stack: try Self.stack())
        _ = try client.connect()
        client.write("GET / HTTP/1.1\r\nContent-Length: 100\r\nAccept: application/json\r\n\r\nsome body")
        let (bytes, fin, _) = try client.readAll()
        let response = try #require(GuestClient.response(bytes))
        #expect(response.status == 400)
        #expect(response.body == "Invalid request.")
        #expect(fin)
    }

    @Test("V2 over TCP: PUT a token, then GET with it")
    func tokenOverTCP() throws {
        var client = GuestClient(stack: try Self.stack(version: .v2))
        _ = try client.connect()
        client.write("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n")
        let (tokenBytes, _, _) = try client.readAll()
        let token = try #require(GuestClient.response(tokenBytes)?.body)
        client.write("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: \(token)\r\n\r\n")
        let (bytes, _, _) = try client.readAll()
        #expect(GuestClient.response(bytes)?.body == "ami-12345678")
    }

    @Test("Hostile frames: random bytes and truncations of valid frames never crash and never leave work behind")
    func hostileFrames() throws {
        var stack = try Self.stack()
        var generator = SystemRandomNumberGenerator()
        let valid = GuestPackets.tcp(sequence: 1, flags: 0x02, mss: 1460, payload: Array("GET / HTTP/1.1\r\n\r\n".utf8))
        for length in 0...valid.count {
            stack.receive(frame: Array(valid.prefix(length)), checksumOffloaded: true, now: 0)
        }
        for _ in 0..<2000 {
            var frame = valid
            for _ in 0..<4 { frame[Int.random(in: 14..<frame.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator) }
            stack.receive(frame: frame, checksumOffloaded: Bool.random(using: &generator), now: 0)
            while stack.nextFrame(now: 0) != nil {}
        }
        #expect(stack.connections.count <= MMDSNetworkStack.maximumConnections)
        #expect(!stack.hasFrameToSend)
    }
}
