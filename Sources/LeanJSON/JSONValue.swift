/// A JSON document as a value. Swiftlet's VMM parses its config file (and,
/// later, control-API bodies) with this small RFC 8259 parser instead of
/// Foundation's JSONDecoder: linking Foundation into `swiftlet-vmm` costs about
/// 3 MiB of resident memory per VM and start-up time, both product features.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// The number as written (so 64-bit integers keep every digit) and as a Double.
    case number(String)
    case string(String)
    case array([JSONValue])
    /// Members in document order; keys are unique (duplicates are a parse error).
    case object([(key: String, value: JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case let (.bool(a), .bool(b)): a == b
        case let (.number(a), .number(b)): a == b
        case let (.string(a), .string(b)): a == b
        case let (.array(a), .array(b)): a == b
        case let (.object(a), .object(b)): a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: false
        }
    }

    /// The member named `key` of an object.
    public subscript(key: String) -> JSONValue? {
        guard case let .object(members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }

    public var stringValue: String? {
        if case let .string(value) = self { return value }
        return nil
    }

    /// The value as an integer, if it is a number written without fraction or exponent.
    public var integerValue: Int64? {
        if case let .number(text) = self { return Int64(text) }
        return nil
    }

    public var unsignedValue: UInt64? {
        if case let .number(text) = self { return UInt64(text) }
        return nil
    }

    public var boolValue: Bool? {
        if case let .bool(value) = self { return value }
        return nil
    }

    /// A short name of the value's type, for error messages.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

/// Why a document is not valid JSON, with the byte offset where parsing stopped.
public struct JSONParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public let offset: Int
    public let reason: String

    public var description: String { "\(reason) at byte \(offset)" }
}
