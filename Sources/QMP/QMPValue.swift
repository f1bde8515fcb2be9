/// A JSON value as QMP carries it: arguments, return values and event data.
/// Numbers are Doubles (QMP's integers of interest fit in 53 bits).
public enum QMPValue: Sendable, Equatable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case null
    case array([QMPValue])
    case object([String: QMPValue])

    /// The member `key` of an object; nil for a missing key or a non-object.
    public subscript(key: String) -> QMPValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    public var string: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var bool: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    public var number: Double? {
        if case .number(let value) = self { return value }
        return nil
    }

    /// The number as an Int if it is integral and in range (cpu indexes, sizes).
    public var int: Int? {
        guard case .number(let value) = self else { return nil }
        return Int(exactly: value)
    }

    public var array: [QMPValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    public var object: [String: QMPValue]? {
        if case .object(let value) = self { return value }
        return nil
    }
}

// Literals, so arguments read as JSON: ["device": "drive0", "force": true].
extension QMPValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .number(Double(value)) }
    public init(floatLiteral value: Double) { self = .number(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: QMPValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, QMPValue)...) {
        // A repeated key keeps its last value, as JSON parsers do.
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
    public init(nilLiteral: ()) { self = .null }
}

extension QMPValue {
    /// Compact JSON text (keys sorted, so requests are reproducible). Non-finite
    /// numbers have no JSON form and are refused rather than sent as garbage.
    func appendJSON(to output: inout [UInt8]) throws(QMPError) {
        switch self {
        case .string(let value):
            Self.appendString(value, to: &output)
        case .number(let value):
            guard value.isFinite else { throw .protocolViolation("the number \(value) has no JSON form") }
            // Integral values go out as integers: QEMU's integer parameters refuse "1.0".
            if value == value.rounded(), abs(value) < 9_007_199_254_740_992, let integer = Int64(exactly: value) {
                output.append(contentsOf: String(integer).utf8)
            } else {
                output.append(contentsOf: "\(value)".utf8)
            }
        case .bool(let value):
            output.append(contentsOf: (value ? "true" : "false").utf8)
        case .null:
            output.append(contentsOf: "null".utf8)
        case .array(let elements):
            output.append(UInt8(ascii: "["))
            for (index, element) in elements.enumerated() {
                if index > 0 { output.append(UInt8(ascii: ",")) }
                try element.appendJSON(to: &output)
            }
            output.append(UInt8(ascii: "]"))
        case .object(let members):
            output.append(UInt8(ascii: "{"))
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { output.append(UInt8(ascii: ",")) }
                Self.appendString(key, to: &output)
                output.append(UInt8(ascii: ":"))
                try members[key, default: .null].appendJSON(to: &output)
            }
            output.append(UInt8(ascii: "}"))
        }
    }

    /// The compact JSON text, as a request carries it.
    var jsonText: String {
        get throws(QMPError) {
            var bytes: [UInt8] = []
            try appendJSON(to: &bytes)
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    static func appendString(_ value: String, to output: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        output.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0..<0x20:
                // Control characters must be escaped; \u00XX covers them all.
                output.append(contentsOf: Array("\\u00".utf8))
                output.append(hex[Int(byte >> 4)])
                output.append(hex[Int(byte & 0xf)])
            default:
                // UTF-8 above ASCII is valid JSON as is.
                output.append(byte)
            }
        }
        output.append(UInt8(ascii: "\""))
    }
}
