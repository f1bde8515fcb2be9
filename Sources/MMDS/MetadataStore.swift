import LeanJSON

/// Why the API could not change the data store. Nothing changed when one is thrown.
public enum MetadataStoreError: Error, Equatable, Sendable, CustomStringConvertible {
    /// PATCH before any PUT.
    case notInitialized
    /// The contents would serialize to more than the size limit.
    case limitExceeded(size: Int, limit: Int)

    /// Firecracker's wording (its API clients match on it).
    public var description: String {
        switch self {
        case .notInitialized: "The MMDS data store is not initialized."
        case .limitExceeded: "The MMDS patch request doesn't fit."
        }
    }
}

/// How a guest wants a value: JSON text, or EC2's IMDS text layout (an
/// object lists its keys one per line, objects with a trailing '/'; a
/// string is itself; anything else cannot be shown).
public enum MetadataFormat: Sendable {
    case json
    case imds
}

/// Why a guest's lookup has no answer.
public enum MetadataLookupError: Error, Equatable, Sendable {
    case notFound
    /// IMDS can show objects and strings only.
    case unsupportedValueType
}

/// The MMDS data store: one JSON document, replaced by PUT, merged by PATCH
/// (RFC 7396), read whole by the API and by JSON pointer (RFC 6901) by the
/// guest. Object members are kept sorted by key (as Firecracker's serde_json
/// maps are), so GET output and IMDS listings come out in a stable order.
/// Its serialized size never exceeds `sizeLimit`.
public struct MetadataStore: Sendable {
    /// nil until the first PUT: PATCH refuses to start from nothing.
    public private(set) var contents: JSONValue?
    /// Bytes of compact JSON the contents may take.
    public var sizeLimit: Int

    public init(sizeLimit: Int) {
        self.sizeLimit = sizeLimit
    }

    /// Replaces the contents.
    public mutating func put(_ value: JSONValue) throws(MetadataStoreError) {
        let normalized = Self.sortedMembers(value)
        try checkSize(normalized)
        contents = normalized
    }

    /// Merges `patch` into the contents (RFC 7396: objects merge member by
    /// member, null removes, anything else replaces).
    public mutating func patch(_ patch: JSONValue) throws(MetadataStoreError) {
        guard let contents else { throw .notInitialized }
        let merged = Self.sortedMembers(Self.merge(patch, into: contents))
        try checkSize(merged)
        self.contents = merged
    }

    func checkSize(_ value: JSONValue) throws(MetadataStoreError) {
        let size = value.serialized.utf8.count
        guard size <= sizeLimit else { throw .limitExceeded(size: size, limit: sizeLimit) }
    }

    /// The value at `path` for a guest: a JSON pointer whose repeated
    /// slashes are collapsed and whose one trailing slash is ignored
    /// (`/latest/meta-data/` is `/latest/meta-data`). An uninitialized
    /// store reads as null.
    public func value(at path: String, format: MetadataFormat) -> Result<String, MetadataLookupError> {
        var pointer = Self.collapsingSlashes(path)
        if pointer.hasSuffix("/") { pointer.removeLast() }
        guard let found = Self.resolve(pointer: pointer, in: contents ?? .null) else { return .failure(.notFound) }
        switch format {
        case .json:
            return .success(found.serialized)
        case .imds:
            switch found {
            case let .object(members):
                return .success(members.map { member in
                    if case .object = member.value { return member.key + "/" }
                    return member.key
                }.joined(separator: "\n"))
            case let .string(text):
                return .success(text)
            default:
                return .failure(.unsupportedValueType)
            }
        }
    }

    // MARK: JSON helpers

    /// RFC 7396 JSON Merge Patch.
    static func merge(_ patch: JSONValue, into target: JSONValue) -> JSONValue {
        guard case let .object(patchMembers) = patch else { return patch }
        var members: [(key: String, value: JSONValue)] = []
        if case let .object(existing) = target { members = existing }
        for (key, value) in patchMembers {
            let index = members.firstIndex { $0.key == key }
            if value == .null {
                if let index { members.remove(at: index) }
            } else if let index {
                members[index].value = merge(value, into: members[index].value)
            } else {
                members.append((key, merge(value, into: .null)))
            }
        }
        return .object(members)
    }

    /// The value with every object's members sorted by key (bytewise UTF-8).
    static func sortedMembers(_ value: JSONValue) -> JSONValue {
        switch value {
        case let .object(members):
            return .object(members.map { ($0.key, sortedMembers($0.value)) }
                .sorted { $0.0.utf8.lexicographicallyPrecedes($1.0.utf8) }
                .map { (key: $0.0, value: $0.1) })
        case let .array(elements):
            return .array(elements.map(sortedMembers))
        default:
            return value
        }
    }

    /// Replaces every run of slashes with one.
    static func collapsingSlashes(_ path: String) -> String {
        var result = ""
        var previousSlash = false
        for character in path {
            if character == "/" {
                if previousSlash { continue }
                previousSlash = true
            } else {
                previousSlash = false
            }
            result.append(character)
        }
        return result
    }

    /// RFC 6901: "" is the whole document; otherwise "/"-separated tokens
    /// with ~1 for '/' and ~0 for '~'; array indexes are decimal without
    /// leading zeros.
    static func resolve(pointer: String, in document: JSONValue) -> JSONValue? {
        if pointer.isEmpty { return document }
        guard pointer.hasPrefix("/") else { return nil }
        var current = document
        for rawToken in pointer.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            let token = rawToken.replacing("~1", with: "/").replacing("~0", with: "~")
            switch current {
            case let .object(members):
                guard let member = members.first(where: { $0.key == token }) else { return nil }
                current = member.value
            case let .array(elements):
                guard !token.isEmpty, token.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                      token == "0" || !token.hasPrefix("0"),
                      let index = Int(token), index < elements.count else { return nil }
                current = elements[index]
            default:
                return nil
            }
        }
        return current
    }
}
