@_spi(Fuzzing) @testable import QMP
import Testing

@Suite("QMP messages parse into greetings, returns, errors and events")
struct QMPMessageTests {
    func parse(_ text: String) throws(QMPError) -> QMPMessage { try QMPMessage.parse(line: Array(text.utf8)) }

    @Test("a greeting gives major.minor.micro and the capabilities")
    func greeting() throws {
        let line = #"{"QMP": {"version": {"qemu": {"micro": 19, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}"# + "\r\n"
        #expect(try parse(line) == .greeting(version: "7.2.19", capabilities: ["oob"]))
    }

    @Test("a greeting without a numeric version is a protocol violation")
    func greetingWithoutVersion() {
        #expect(throws: QMPError.self) { try parse(#"{"QMP": {"version": {"qemu": {"major": "7", "minor": 2, "micro": 0}}}}"#) }
        #expect(throws: QMPError.self) { try parse(#"{"QMP": {"version": {"qemu": {"major": -1, "minor": 2, "micro": 0}}}}"#) }
        #expect(throws: QMPError.self) { try parse(#"{"QMP": {}}"#) }
    }

    @Test("a return keeps its id and value, with booleans told apart from numbers")
    func returnValue() throws {
        let message = try parse(#"{"return": {"status": "running", "singlestep": false, "running": true, "count": 1}, "id": 7}"#)
        #expect(message == .returnValue(id: .number(7), value: ["status": "running", "singlestep": false, "running": true, "count": 1]))
        #expect(try parse(#"{"return": {}}"#) == .returnValue(id: nil, value: .object([:])))
        #expect(try parse(#"{"return": [1.5, null, "x"], "id": "a"}"#) == .returnValue(id: "a", value: [1.5, nil, "x"]))
    }

    @Test("an error gives its class and description")
    func error() throws {
        let message = try parse(#"{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#)
        #expect(message == .error(id: .number(3), errorClass: "CommandNotFound", description: "The command nope has not been found"))
        #expect(throws: QMPError.self, "an error needs class and desc") { try parse(#"{"error": {"class": "GenericError"}}"#) }
    }

    @Test("an event gives its name, data and timestamp in seconds")
    func event() throws {
        let message = try parse(#"{"timestamp": {"seconds": 1700000000, "microseconds": 250000}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#)
        #expect(message == .event(QMPEvent(name: "SHUTDOWN", data: ["guest": false, "reason": "host-qmp-quit"], timestamp: 1_700_000_000.25)))
        #expect(try parse(#"{"event": "STOP"}"#) == .event(QMPEvent(name: "STOP")))
        #expect(throws: QMPError.self, "event data must be an object") { try parse(#"{"event": "STOP", "data": 3}"#) }
    }

    @Test("garbage, non-objects and unknown messages are protocol violations", arguments: [
        "", "\r\n", "not json", "{\"return\":", "[1, 2]", "\"QMP\"", "42", "{}", "{\"execute\": \"stop\"}", "{\"event\": 5}",
        String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
    ])
    func garbage(line: String) {
        let error = #expect(throws: QMPError.self) { try parse(line) }
        guard case .protocolViolation? = error else {
            Issue.record("expected a protocol violation, got \(String(describing: error))")
            return
        }
    }

    @Test("bytes that are not UTF-8 are a protocol violation")
    func invalidUTF8() {
        #expect(throws: QMPError.self) { try QMPMessage.parse(line: [0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]) }
    }

    @Test("a line longer than 1 MiB is refused, one of exactly 1 MiB is parsed")
    func tooLong() throws {
        let padding = QMPMessage.maximumLineLength - #"{"return": ""}"#.utf8.count
        let longest = #"{"return": ""# + String(repeating: "x", count: padding) + #""}"#
        #expect(longest.utf8.count == QMPMessage.maximumLineLength)
        guard case .returnValue(_, .string(let value)) = try parse(longest + "\r\n") else {
            Issue.record("the longest line did not parse")
            return
        }
        #expect(value.utf8.count == padding)
        let error = #expect(throws: QMPError.self) { try parse(#"{"return": ""# + String(repeating: "x", count: padding + 1) + #""}"#) }
        #expect(error.map { "\($0)" }?.contains("more than") == true, "the error says the line is too long")
    }

    @Test("values encode as compact JSON with sorted keys and integral numbers as integers")
    func encoding() throws {
        let value: QMPValue = ["b": [1, 2.5, true, nil], "a": "quote \" backslash \\ newline \n", "c": ["id": 3]]
        #expect(try value.jsonText == #"{"a":"quote \" backslash \\ newline \u000a","b":[1,2.5,true,null],"c":{"id":3}}"#)
        #expect(throws: QMPError.self, "infinity has no JSON form") { try QMPValue.number(.infinity).jsonText }
    }
}
