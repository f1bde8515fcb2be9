import Testing
@testable import VirtioVsock

@Suite("CONNECT line parser")
struct HostConnectLineTests {
    @Test("CONNECT <port>\\n gives the port and the line's length; the keyword is case-insensitive")
    func connect() {
        #expect(HostConnectLine.parse(Array("CONNECT 52\n".utf8)) == .connect(port: 52, length: 11))
        #expect(HostConnectLine.parse(Array("connect 4294967295\nrest".utf8)) == .connect(port: 4_294_967_295, length: 19))
        #expect(HostConnectLine.parse(Array("Connect\t7\r\n".utf8)) == .connect(port: 7, length: 11))
    }

    @Test("a partial line waits; a line without a newline within 32 bytes, a bad keyword or port is invalid")
    func partialAndInvalid() {
        #expect(HostConnectLine.parse(Array("CONN".utf8)) == .incomplete)
        #expect(HostConnectLine.parse([UInt8]()) == .incomplete)
        #expect(HostConnectLine.parse(Array(repeating: UInt8(ascii: "A"), count: 32)) == .invalid)
        for line in ["LISTEN 5\n", "CONNECT\n", "CONNECT -1\n", "CONNECT 4294967296\n", "CONNECT 5 6\n", "CONNECT 0x10\n",
                     "CONNECT " + String(repeating: "0", count: 30) + "1\n"] {
            #expect(HostConnectLine.parse(Array(line.utf8)) == .invalid, "\(line)")
        }
    }

    @Test("the acknowledgement is OK <host port>\\n")
    func acknowledgement() {
        #expect(HostConnectLine.acknowledgement(hostPort: 1_073_741_824) == Array("OK 1073741824\n".utf8))
    }
}
