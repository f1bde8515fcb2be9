/// The first line a host process writes on the vsock Unix socket:
/// `CONNECT <port>\n` (Firecracker's hybrid vsock). The answer, once the
/// guest accepts, is `OK <host port>\n`.
public enum HostConnectLine {
    /// A longer first line is refused (Firecracker reads at most 32 bytes).
    public static let maximumLength = 32

    public enum Outcome: Equatable, Sendable {
        /// The line is complete: connect to this guest port. `length` bytes
        /// (newline included) belong to the line; what follows is stream data.
        case connect(port: UInt32, length: Int)
        /// No newline yet and still under the limit: wait for more bytes.
        case incomplete
        /// Not a CONNECT line, a bad port, or too long without a newline.
        case invalid
    }

    /// Looks at the bytes received so far (they stay unread until the
    /// caller consumes `length`). `CONNECT` is case-insensitive; one or
    /// more spaces or tabs separate it from a decimal port; a carriage
    /// return before the newline is allowed.
    public static func parse(_ bytes: some Collection<UInt8>) -> Outcome {
        guard let newline = bytes.firstIndex(of: 0x0A) else {
            return bytes.count >= maximumLength ? .invalid : .incomplete
        }
        let length = bytes.distance(from: bytes.startIndex, to: newline) + 1
        guard length <= maximumLength else { return .invalid }
        var line = Array(bytes[..<newline])
        if line.last == 0x0D { line.removeLast() }
        let words = line.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 })
        guard words.count == 2, words[0].count == 7,
              String(decoding: words[0], as: UTF8.self).lowercased() == "connect",
              words[1].count <= 10, words[1].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let port = UInt32(String(decoding: words[1], as: UTF8.self)) else {
            return .invalid
        }
        return .connect(port: port, length: length)
    }

    /// The acknowledgement for a connection established to the guest.
    public static func acknowledgement(hostPort: UInt32) -> [UInt8] {
        Array("OK \(hostPort)\n".utf8)
    }
}
