import LeanJSON
import Testing
@testable import MMDS

@Suite("MMDS data store")
struct MetadataStoreTests {
    static func json(_ text: String) throws -> JSONValue { try JSONParser.parse(text) }

    static let sample = """
        {"name": {"first": "John", "second": "Doe"}, "age": 43, "phones": ["+401234567", "+441234567"],
         "member": false, "shares_percentage": 12.12, "balance": -24, "json_string": "{\\n  \\"hello\\": \\"world\\"\\n}"}
        """

    @Test("PUT replaces the contents and sorts object members by key, as Firecracker's store shows them")
    func putReplacesAndSorts() throws {
        var store = MetadataStore(sizeLimit: 51_200)
        #expect(store.contents == nil)
        try store.put(Self.json(#"{"b": 1, "a": {"z": true, "y": null}}"#))
        #expect(store.contents?.serialized == #"{"a":{"y":null,"z":true},"b":1}"#)
        try store.put(Self.json(#"{"c": "x"}"#))
        #expect(store.contents?.serialized == #"{"c":"x"}"#)
    }

    @Test("PATCH is an RFC 7396 merge: objects merge, null removes, anything else replaces")
    func patchMerges() throws {
        var store = MetadataStore(sizeLimit: 51_200)
        try store.put(Self.json(#"{"name": {"first": "John", "second": "Doe"}, "age": "43", "phones": {"home": {"RO": "+40", "UK": "+44"}, "mobile": "+44 2"}}"#))
        try store.patch(Self.json(#"{"name": {"second": null, "last": "Kennedy"}, "age": "44", "phones": {"home": "+44 1", "mobile": {"RO": "+40 2", "UK": null}}}"#))
        #expect(store.contents?.serialized == #"{"age":"44","name":{"first":"John","last":"Kennedy"},"phones":{"home":"+44 1","mobile":{"RO":"+40 2"}}}"#)
        // A non-object patch replaces the whole document.
        try store.patch(Self.json("[1, 2]"))
        #expect(store.contents?.serialized == "[1,2]")
    }

    @Test("PATCH before any PUT is refused and leaves the store uninitialized")
    func patchNeedsPut() throws {
        var store = MetadataStore(sizeLimit: 100)
        #expect(throws: MetadataStoreError.notInitialized) { try store.patch(Self.json(#"{"a": 1}"#)) }
        #expect(store.contents == nil)
        #expect(MetadataStoreError.notInitialized.description == "The MMDS data store is not initialized.")
    }

    @Test("The size limit counts compact JSON; a PUT or PATCH over it changes nothing (Firecracker's numbers)")
    func sizeLimit() throws {
        var store = MetadataStore(sizeLimit: 51_200)
        let tooLarge = #"{"key": ""# + String(repeating: "X", count: 51_300) + #""}"#
        #expect(throws: MetadataStoreError.self) { try store.put(Self.json(tooLarge)) }
        #expect(store.contents == nil)

        try store.put(Self.json(#"{"name": {"first": "John", "second": "Doe"}, "age": "43"}"#))
        try store.patch(Self.json(#"{"name": {"first": "John", "second": null}, "age": "43"}"#))
        // 51151 filler bytes bring the document to exactly 51200 bytes.
        try store.patch(Self.json(#"{"new_key": ""# + String(repeating: "X", count: 51_151) + #""}"#))
        #expect(store.contents?.serialized.utf8.count == 51_200)
        #expect(throws: MetadataStoreError.limitExceeded(size: 51_218, limit: 51_200)) { try store.patch(Self.json(#"{"new_key2": "smth"}"#)) }
        #expect(store.contents?.serialized.contains("smth") == false)
        try store.patch(Self.json(#"{"new_key": "smth"}"#))
        #expect(store.contents?.serialized.utf8.count == 53)
    }

    @Test("GET by JSON pointer: objects list their keys in IMDS text (objects with '/'), strings are themselves, other types are 501 in IMDS")
    func lookup() throws {
        var store = MetadataStore(sizeLimit: 51_200)
        try store.put(Self.json(Self.sample))
        #expect(store.value(at: "/invalid_path", format: .imds) == .failure(.notFound))
        #expect(store.value(at: "/invalid_path", format: .json) == .failure(.notFound))
        #expect(store.value(at: "/name", format: .imds) == .success("first\nsecond"))
        #expect(store.value(at: "/name", format: .json) == .success(#"{"first":"John","second":"Doe"}"#))
        #expect(store.value(at: "/age", format: .imds) == .failure(.unsupportedValueType))
        #expect(store.value(at: "/age", format: .json) == .success("43"))
        #expect(store.value(at: "/phones/", format: .imds) == .failure(.unsupportedValueType))
        #expect(store.value(at: "/phones/", format: .json) == .success(#"["+401234567","+441234567"]"#))
        #expect(store.value(at: "/phones/0/", format: .imds) == .success("+401234567"))
        #expect(store.value(at: "/phones/0", format: .json) == .success(#""+401234567""#))
        #expect(store.value(at: "/phones/01", format: .json) == .failure(.notFound))
        #expect(store.value(at: "/phones/2", format: .json) == .failure(.notFound))
        #expect(store.value(at: "/member", format: .json) == .success("false"))
        #expect(store.value(at: "/shares_percentage", format: .json) == .success("12.12"))
        #expect(store.value(at: "/balance", format: .json) == .success("-24"))
        #expect(store.value(at: "/json_string", format: .imds) == .success("{\n  \"hello\": \"world\"\n}"))
        #expect(store.value(at: "/json_string", format: .json) == .success(#""{\n  \"hello\": \"world\"\n}""#))
        // The root: keys sorted, objects marked.
        #expect(store.value(at: "/", format: .imds) == .success("age\nbalance\njson_string\nmember\nname/\nphones\nshares_percentage"))
        // Repeated slashes collapse; a relative path finds nothing.
        #expect(store.value(at: "//name///first", format: .imds) == .success("John"))
        #expect(store.value(at: "name", format: .imds) == .failure(.notFound))
    }

    @Test("JSON pointer escapes: ~1 is '/', ~0 is '~'")
    func pointerEscapes() throws {
        var store = MetadataStore(sizeLimit: 1000)
        try store.put(Self.json(#"{"a/b": "slash", "m~n": "tilde"}"#))
        #expect(store.value(at: "/a~1b", format: .imds) == .success("slash"))
        #expect(store.value(at: "/m~0n", format: .imds) == .success("tilde"))
    }

    @Test("An uninitialized store reads as null: the root is 501 in IMDS and 'null' in JSON; paths are 404")
    func uninitializedReads() {
        let store = MetadataStore(sizeLimit: 1000)
        #expect(store.value(at: "/", format: .imds) == .failure(.unsupportedValueType))
        #expect(store.value(at: "/", format: .json) == .success("null"))
        #expect(store.value(at: "/latest", format: .json) == .failure(.notFound))
    }
}
