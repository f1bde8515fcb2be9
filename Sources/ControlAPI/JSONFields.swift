import LeanJSON

/// Reads the members of one JSON object body with strict checks: unknown
/// members, wrong types and missing required members are `APIError`s that
/// name the member. `null` counts as absent for optional members.
struct JSONFields {
    let members: [(key: String, value: JSONValue)]
    /// What the object is, for messages ("boot-source", "drive 'rootfs'").
    let context: String

    init(_ value: JSONValue, context: String) throws(APIError) {
        guard case let .object(members) = value else {
            throw .deserialization("invalid type: \(value.typeName), expected a JSON object (\(context))")
        }
        self.members = members
        self.context = context
    }

    /// Parses a request body as a JSON object.
    init(body: [UInt8], context: String) throws(APIError) {
        guard !body.isEmpty else { throw .deserialization("EOF while parsing a value: \(context) needs a JSON body") }
        let value: JSONValue
        do {
            value = try JSONParser.parse(body)
        } catch {
            throw .deserialization("malformed JSON (\(context)): \(error)")
        }
        try self.init(value, context: context)
    }

    /// Refuses any member not in `known`.
    func allowOnly(_ known: [String]) throws(APIError) {
        for member in members where !known.contains(member.key) {
            throw .deserialization("unknown field `\(member.key.prefix(100))`, expected one of \(known.map { "`\($0)`" }.joined(separator: ", ")) (\(context))")
        }
    }

    func value(_ key: String) -> JSONValue? {
        guard let value = members.first(where: { $0.key == key })?.value, value != .null else { return nil }
        return value
    }

    func has(_ key: String) -> Bool { value(key) != nil }

    func string(_ key: String) throws(APIError) -> String? {
        guard let value = value(key) else { return nil }
        guard let text = value.stringValue else { throw mismatch(key, value, "a string") }
        return text
    }

    func requiredString(_ key: String) throws(APIError) -> String {
        guard let text = try string(key) else { throw missing(key) }
        return text
    }

    func bool(_ key: String) throws(APIError) -> Bool? {
        guard let value = value(key) else { return nil }
        guard let flag = value.boolValue else { throw mismatch(key, value, "true or false") }
        return flag
    }

    func requiredBool(_ key: String) throws(APIError) -> Bool {
        guard let flag = try bool(key) else { throw missing(key) }
        return flag
    }

    func integer(_ key: String, in range: ClosedRange<UInt64>) throws(APIError) -> UInt64? {
        guard let value = value(key) else { return nil }
        guard let number = value.unsignedValue else { throw mismatch(key, value, "a whole number") }
        guard range.contains(number) else {
            throw .badRequest("\(context): '\(key)' is \(number); expected \(range.lowerBound) to \(range.upperBound)")
        }
        return number
    }

    func requiredInteger(_ key: String, in range: ClosedRange<UInt64>) throws(APIError) -> UInt64 {
        guard let number = try integer(key, in: range) else { throw missing(key) }
        return number
    }

    func missing(_ key: String) -> APIError {
        .deserialization("missing field `\(key)` (\(context))")
    }

    func mismatch(_ key: String, _ value: JSONValue, _ expected: String) -> APIError {
        .deserialization("invalid type: \(value.typeName) for `\(key)`, expected \(expected) (\(context))")
    }
}
