import GuestMemory

/// A kernel command line, validated as it is built so that what the kernel
/// parses is exactly what was appended: no NUL (it would end the line early),
/// no newlines or other control characters, balanced double quotes, and never
/// longer than the kernel accepts.
public struct KernelCommandLine: Equatable, Sendable, CustomStringConvertible {
    /// Longest line in bytes, not counting the terminating NUL.
    public let maximumLength: Int
    public private(set) var parameters: [String] = []

    /// `maximumLength` is the bzImage's `cmdline_size`, or for PVH the room the
    /// VMM reserved minus one byte for the NUL.
    public init(maximumLength: Int) {
        self.maximumLength = maximumLength
    }

    /// A line limited by both the kernel's `cmdline_size` and the VMM's room
    /// of `capacity` bytes (which includes the NUL).
    public init(for header: SetupHeader, capacity: Int) {
        self.init(maximumLength: min(Int(header.commandLineSize), max(capacity - 1, 0)))
    }

    /// The line as the kernel sees it.
    public var description: String { parameters.joined(separator: " ") }

    /// Length in bytes, without the NUL.
    public var length: Int { description.utf8.count }

    /// Appends one or more whitespace-separated parameters as given, e.g.
    /// `console=ttyS0 quiet` or `dyndbg="file foo.c +p"`.
    public mutating func append(_ text: String) throws(BootError) {
        let words = try Self.split(text)
        try appendValidated(words)
    }

    /// Appends `key=value`, quoting the value if it holds whitespace.
    public mutating func append(key: String, value: String) throws(BootError) {
        guard !key.isEmpty, !key.contains(where: { $0.isWhitespace || $0 == "=" || $0 == "\"" }) else {
            throw .commandLineInvalidKey(key: key)
        }
        try Self.checkCharacters(key)
        try Self.checkCharacters(value, in: "\(key)=\(value)")
        guard !value.contains("\"") else { throw .commandLineInvalidValue(key: key, value: value) }
        let quoted = value.contains(where: \.isWhitespace) ? "\"\(value)\"" : value
        try appendValidated(["\(key)=\(quoted)"])
    }

    /// The line's bytes followed by the NUL the kernel looks for.
    public var nulTerminatedBytes: [UInt8] { Array(description.utf8) + [0] }

    /// Writes the NUL-terminated line at `address`.
    public func write(into memory: GuestMemory, at address: GuestAddress) throws(BootError) {
        do {
            try memory.write(bytes: nulTerminatedBytes, at: address)
        } catch {
            throw error.during("writing the kernel command line at \(address)")
        }
    }

    private mutating func appendValidated(_ words: [String]) throws(BootError) {
        guard !words.isEmpty else { return }
        let added = words.reduce(0) { $0 + $1.utf8.count } + words.count - (parameters.isEmpty ? 1 : 0)
        let newLength = length + added
        guard newLength <= maximumLength else {
            throw .commandLineTooLong(length: newLength, limit: maximumLength)
        }
        parameters += words
    }

    private static func checkCharacters(_ text: String, in parameter: String? = nil) throws(BootError) {
        for scalar in text.unicodeScalars where scalar.value < 0x20 || scalar.value == 0x7F {
            throw .commandLineInvalidCharacter(parameter: parameter ?? text, scalar: scalar.value)
        }
    }

    /// Splits on spaces outside double quotes, as the kernel's parser does.
    private static func split(_ text: String) throws(BootError) -> [String] {
        var words: [String] = []
        var current = ""
        var inQuotes = false
        for character in text {
            if character == "\"" { inQuotes.toggle() }
            if character == " " && !inQuotes {
                if !current.isEmpty { words.append(current) }
                current = ""
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { words.append(current) }
        for word in words {
            try checkCharacters(word)
        }
        if inQuotes, let last = words.last { throw .commandLineUnbalancedQuote(parameter: last) }
        return words
    }
}
