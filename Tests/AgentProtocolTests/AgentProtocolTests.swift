import Testing
@testable import AgentProtocol

@Suite("Agent protocol frames")
struct AgentProtocolTests {
    static let samples: [AgentMessage] = [
        .hello(version: 1),
        .helloReply(version: 1, agentVersion: "0.1.0"),
        .error(code: .notFound, message: "no such program: frobnicate"),
        .exec(ExecRequest(arguments: ["sh", "-c", "echo hi"], environment: ["A=1", "B="], workingDirectory: "/tmp",
                          terminal: true, forwardsStdin: true, rows: 50, columns: 132)),
        .started(pid: 42),
        .stdin([1, 2, 3]), .stdin([]), .stdout(Array("out".utf8)), .stderr(Array("err".utf8)),
        .signal(2), .resize(rows: 10, columns: 20),
        .exit(.exited(3)), .exit(.signaled(9)),
        .putFile(path: "/root/a b", mode: 0o644, size: 1 << 40), .getFile(path: "/etc/hostname"),
        .data([0, 255]), .done, .fileInfo(mode: 0o100755, size: 12),
        .info,
        .infoReply(GuestInfo(kernel: "Linux 6.1 #1 x86_64", hostname: "guest", uptimeMilliseconds: 1234,
                             memoryTotalBytes: 1 << 28, memoryAvailableBytes: 1 << 27, cpus: 2,
                             addresses: ["eth0 10.0.0.2/24"], agentVersion: "0.1.0")),
        .shutdown(reboot: false), .shutdown(reboot: true), .ping(token: 99), .pong(token: 99),
    ]

    @Test("every message survives an encode and a decode, fed one byte at a time")
    func roundTrip() throws {
        var decoder = FrameDecoder()
        var decoded: [AgentMessage] = []
        for byte in Self.samples.flatMap(\.frame.encoded) {
            decoder.append([byte])
            while let frame = try decoder.next() { decoded.append(try AgentMessage(frame: frame)) }
        }
        #expect(decoded == Self.samples)
        #expect(decoder.bufferedCount == 0)
    }

    @Test("a length over the limit is refused before its body arrives")
    func oversizedFrame() {
        var decoder = FrameDecoder(maximumPayload: 16)
        decoder.append([18, 0, 0, 0, FrameType.stdout.rawValue])
        #expect(throws: AgentProtocolError.frameTooLarge(length: 17, limit: 16)) { try decoder.next() }
    }

    @Test("an empty frame and an unknown type are refused")
    func badHeaders() {
        var empty = FrameDecoder()
        empty.append([0, 0, 0, 0])
        #expect(throws: AgentProtocolError.emptyFrame) { try empty.next() }
        var unknown = FrameDecoder()
        unknown.append([1, 0, 0, 0, 0x7f])
        #expect(throws: AgentProtocolError.unknownFrameType(0x7f)) { try unknown.next() }
    }

    @Test("short fields, trailing bytes and out-of-range values name the field")
    func malformedBodies() {
        #expect(throws: AgentProtocolError.truncated(field: "version")) { try AgentMessage(frame: AgentFrame(.hello, [1])) }
        #expect(throws: AgentProtocolError.trailingBytes(frame: .ping, count: 1)) { try AgentMessage(frame: AgentFrame(.ping, Array(repeating: 0, count: 9))) }
        #expect(throws: AgentProtocolError.invalidField(field: "signal", value: 0)) { try AgentMessage(frame: AgentFrame(.signal, [0, 0, 0, 0])) }
        #expect(throws: AgentProtocolError.invalidField(field: "exit kind", value: 7)) { try AgentMessage(frame: AgentFrame(.exit, [7, 0, 0, 0, 0])) }
        // An argv count far beyond the frame's size is refused before any allocation.
        #expect(throws: AgentProtocolError.invalidField(field: "argv", value: 0xffff_ffff)) { try AgentMessage(frame: AgentFrame(.exec, [0xff, 0xff, 0xff, 0xff])) }
        #expect(throws: AgentProtocolError.truncated(field: "argv")) { try AgentMessage(frame: AgentFrame(.exec, [100, 0, 0, 0])) }
        #expect(throws: AgentProtocolError.invalidField(field: "argv count", value: 0)) { try AgentMessage(frame: AgentFrame(.exec, [0, 0, 0, 0])) }
        var string = WireWriter()
        string.u32(1000)
        #expect(throws: AgentProtocolError.truncated(field: "path")) { try AgentMessage(frame: AgentFrame(.getFile, string.bytes)) }
    }

    @Test("exit statuses map to the shell's numbers")
    func shellStatus() {
        #expect(ExitStatus.exited(3).shellStatus == 3)
        #expect(ExitStatus.signaled(15).shellStatus == 143)
    }
}
