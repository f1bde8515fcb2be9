import Testing
@testable import LeanJSON

@Suite("JSON parser")
struct JSONParserTests {
    @Test("parses every kind of value and keeps member order")
    func values() throws {
        let value = try JSONParser.parse(#" {"a": [1, -2.5e3, true, false, null], "b": {"c": "d"}, "n": 18446744073709551615} "#)
        #expect(value["a"] == .array([.number("1"), .number("-2.5e3"), .bool(true), .bool(false), .null]))
        #expect(value["b"]?["c"]?.stringValue == "d")
        #expect(value["n"]?.unsignedValue == UInt64.max)
        #expect(value["n"]?.integerValue == nil)
        guard case let .object(members) = value else { Issue.record("not an object"); return }
        #expect(members.map(\.key) == ["a", "b", "n"])
    }

    @Test("decodes escapes, including surrogate pairs")
    func escapes() throws {
        #expect(try JSONParser.parse(#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#) == .string("a\"\\/\u{8}\u{c}\n\r\té😀"))
    }

    @Test("rejects malformed documents with the offset", arguments: [
        ("", "unexpected end of document at byte 0"),
        ("[1,]", "unexpected character ']' at byte 3"),
        ("{\"a\" 1}", "expected ':' after member name at byte 5"),
        ("01", "unexpected data after the document at byte 1"),
        ("1.", "expected digits after '.' at byte 2"),
        ("\"\\x\"", "invalid escape '\\x' at byte 3"),
        ("\"\\ud800\"", "unpaired surrogate in \\u escape at byte 7"),
        ("\"a\nb\"", "control character in string (escape it) at byte 3"),
        ("tru", "invalid literal (expected true) at byte 3"),
        ("{\"a\":1,\"a\":2}", "duplicate key \"a\" at byte 7"),
    ])
    func malformed(text: String, message: String) {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(text) }
        do { _ = try JSONParser.parse(text) } catch { #expect(error.description == message) }
    }

    @Test("rejects strings that are not valid UTF-8")
    func invalidUTF8() {
        #expect(throws: JSONParseError(offset: 4, reason: "string is not valid UTF-8")) { try JSONParser.parse([0x22, 0xFF, 0xFE, 0x22]) }
    }

    @Test("bounds nesting so hostile input cannot exhaust the stack")
    func depth() throws {
        let deep = String(repeating: "[", count: 100_000)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(deep) }
        let fine = String(repeating: "[", count: 63) + String(repeating: "]", count: 63)
        #expect(throws: Never.self) { try JSONParser.parse(fine) }
    }

    @Test("serializes back to equivalent JSON")
    func roundTrip() throws {
        let text = #"{"k":[1,"two\n\u0001",{"x":null}],"b":false}"#
        let value = try JSONParser.parse(text)
        #expect(value.serialized == text)
        #expect(try JSONParser.parse(value.serialized) == value)
    }
}
