import Foundation

/// One line QEMU sends on a QMP socket, classified. Public only to the fuzz
/// target (SPI), which feeds it arbitrary bytes: whatever a hostile or broken
/// QEMU writes must give a message or a `QMPError`, never a trap.
@_spi(Fuzzing)
public enum QMPMessage: Sendable, Equatable {
    /// {"QMP": {"version": {"qemu": {"major", "minor", "micro"}, "package"}, "capabilities": [...]}}
    case greeting(version: String, capabilities: [String])
    /// {"return": value, "id": id}; id is nil when the request had none.
    case returnValue(id: QMPValue?, value: QMPValue)
    /// {"error": {"class", "desc"}, "id": id}
    case error(id: QMPValue?, errorClass: String, description: String)
    /// {"event": name, "data": {...}, "timestamp": {"seconds", "microseconds"}}
    case event(QMPEvent)

    /// The longest line accepted (without its line ending). QEMU's largest
    /// answer, query-qmp-schema, is about 200 KiB.
    public static let maximumLineLength = 1 << 20

    /// Deeper nesting than this is refused: the conversion recurses, and no QMP message nests deeply.
    static let maximumDepth = 64

    /// Parses one line (a trailing CR or LF is ignored).
    public static func parse(line: [UInt8]) throws(QMPError) -> QMPMessage {
        var end = line.count
        while end > 0, line[end - 1] == UInt8(ascii: "\n") || line[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        guard end <= maximumLineLength else { throw .protocolViolation("a line of more than \(maximumLineLength) bytes") }
        guard end > 0 else { throw .protocolViolation("an empty line") }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(line[..<end]), options: [])
        } catch {
            throw .protocolViolation("malformed JSON: \(Self.excerpt(line[..<end]))")
        }
        guard case .object(let members) = try QMPValue(foundation: object, depth: 0) else {
            throw .protocolViolation("a message that is not a JSON object: \(Self.excerpt(line[..<end]))")
        }
        return try classify(members)
    }

    static func classify(_ members: [String: QMPValue]) throws(QMPError) -> QMPMessage {
        if let greeting = members["QMP"] {
            let qemu = greeting["version"]?["qemu"]
            guard let major = qemu?["major"]?.versionComponent, let minor = qemu?["minor"]?.versionComponent,
                  let micro = qemu?["micro"]?.versionComponent
            else { throw .protocolViolation("a greeting without version.qemu.{major,minor,micro}") }
            // Capabilities are informational; absent or odd entries are not worth refusing the connection.
            let capabilities = greeting["capabilities"]?.array?.compactMap(\.string) ?? []
            return .greeting(version: "\(major).\(minor).\(micro)", capabilities: capabilities)
        }
        if let value = members["return"] {
            return .returnValue(id: members["id"], value: value)
        }
        if let error = members["error"] {
            guard let errorClass = error["class"]?.string, let description = error["desc"]?.string else {
                throw .protocolViolation("an error without class and desc")
            }
            return .error(id: members["id"], errorClass: errorClass, description: description)
        }
        if let name = members["event"] {
            guard let name = name.string else { throw .protocolViolation("an event whose name is not a string") }
            let data: [String: QMPValue]
            switch members["data"] {
            case nil, .null?: data = [:]
            case .object(let object)?: data = object
            default: throw .protocolViolation("event \(name) with data that is not an object")
            }
            var timestamp: Double?
            if let seconds = members["timestamp"]?["seconds"]?.number, let microseconds = members["timestamp"]?["microseconds"]?.number {
                timestamp = seconds + microseconds / 1_000_000
            }
            return .event(QMPEvent(name: name, data: data, timestamp: timestamp))
        }
        throw .protocolViolation("a message with none of QMP, return, error, event (keys: \(members.keys.sorted().prefix(8).joined(separator: ", ")))")
    }

    /// The head of a bad line for an error message, printable and short.
    static func excerpt(_ bytes: ArraySlice<UInt8>) -> String {
        let head = String(decoding: bytes.prefix(80), as: UTF8.self)
        return String(head.unicodeScalars.map { $0.value < 0x20 ? "?" : Character($0) }) + (bytes.count > 80 ? "..." : "")
    }
}

extension QMPValue {
    /// A non-negative integral number small enough to print as a version part.
    var versionComponent: Int? {
        guard let value = int, (0...1_000_000).contains(value) else { return nil }
        return value
    }

    /// Converts JSONSerialization's output (NSString, NSNumber, NSNull, arrays, dictionaries).
    init(foundation object: Any, depth: Int) throws(QMPError) {
        guard depth < QMPMessage.maximumDepth else { throw .protocolViolation("JSON nested deeper than \(QMPMessage.maximumDepth)") }
        switch object {
        case let string as String:
            self = .string(string)
        case let number as NSNumber:
            // Foundation returns true/false as a boolean NSNumber, whose type code is "c" (char);
            // a JSON integer never comes back as a char.
            // SAFETY: objCType is a NUL-terminated constant string owned by Foundation.
            if String(cString: number.objCType) == "c" {
                self = .bool(number.boolValue)
            } else {
                self = .number(number.doubleValue)
            }
        case is NSNull:
            self = .null
        case let array as [Any]:
            var elements: [QMPValue] = []
            elements.reserveCapacity(array.count)
            for element in array { elements.append(try QMPValue(foundation: element, depth: depth + 1)) }
            self = .array(elements)
        case let dictionary as [String: Any]:
            var members: [String: QMPValue] = [:]
            members.reserveCapacity(dictionary.count)
            for (key, value) in dictionary { members[key] = try QMPValue(foundation: value, depth: depth + 1) }
            self = .object(members)
        default:
            throw .protocolViolation("an unexpected JSON value of type \(type(of: object))")
        }
    }
}
