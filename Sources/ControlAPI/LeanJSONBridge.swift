import LeanJSON

/// LeanJSON's string escaping, shared by the API's JSON writers.
enum LeanJSONBridge {
    static func quoted(_ text: String) -> String {
        JSONValue.string(text).serialized
    }
}
