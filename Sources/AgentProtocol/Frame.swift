/// The type byte of a frame. docs/agent.md gives each one's fields and who
/// may send it when.
public enum FrameType: UInt8, Sendable, CaseIterable {
    // Any connection.
    case hello = 0x01          // client -> agent, first frame: u16 version
    case helloReply = 0x02     // agent -> client: u16 version, string agentVersion
    case error = 0x03          // agent -> client, last frame: u32 code, string message
    // Exec.
    case exec = 0x10           // client -> agent: ExecRequest
    case started = 0x11        // agent -> client: u32 pid
    case stdin = 0x12          // client -> agent: raw bytes; empty = end of input
    case stdout = 0x13         // agent -> client: raw bytes
    case stderr = 0x14         // agent -> client: raw bytes
    case signal = 0x15         // client -> agent: u32 signal number
    case resize = 0x16         // client -> agent: u16 rows, u16 columns
    case exit = 0x17           // agent -> client, last frame: u8 kind, i32 value
    // Files.
    case putFile = 0x20        // client -> agent: string path, u32 mode, u64 size
    case getFile = 0x21        // client -> agent: string path
    case data = 0x22           // either way: raw bytes of a file
    case done = 0x23           // agent -> client, last frame: the request succeeded
    case fileInfo = 0x24       // agent -> client: u32 mode, u64 size
    // Other requests.
    case info = 0x30           // client -> agent: no fields
    case infoReply = 0x31      // agent -> client, last frame: GuestInfo
    case shutdown = 0x40       // client -> agent: u8 action (0 power off, 1 reboot)
    case ping = 0x50           // client -> agent: u64 token
    case pong = 0x51           // agent -> client, last frame: u64 token

    public var name: String {
        switch self {
        case .hello: return "hello"
        case .helloReply: return "hello-reply"
        case .error: return "error"
        case .exec: return "exec"
        case .started: return "started"
        case .stdin: return "stdin"
        case .stdout: return "stdout"
        case .stderr: return "stderr"
        case .signal: return "signal"
        case .resize: return "resize"
        case .exit: return "exit"
        case .putFile: return "put-file"
        case .getFile: return "get-file"
        case .data: return "data"
        case .done: return "done"
        case .fileInfo: return "file-info"
        case .info: return "info"
        case .infoReply: return "info-reply"
        case .shutdown: return "shutdown"
        case .ping: return "ping"
        case .pong: return "pong"
        }
    }
}

/// One frame: a UInt32 little-endian length (of the type byte plus the
/// body), the type byte, then the body.
public struct AgentFrame: Equatable, Sendable {
    /// The protocol version this code speaks (docs/agent.md).
    public static let protocolVersion: UInt16 = 1
    /// The guest's vsock port the agent listens on.
    public static let defaultPort: UInt32 = 1024
    /// The largest body a frame may carry. Senders split data into frames
    /// of at most `dataChunk` bytes; receivers refuse anything longer than
    /// this without allocating for it.
    public static let maximumPayload: UInt32 = 1 << 20
    /// How much stdin/stdout/file data one frame carries at most.
    public static let dataChunk = 64 * 1024
    /// Bytes before the body: length (4) and type (1).
    public static let headerSize = 5

    public var type: FrameType
    public var body: [UInt8]

    public init(_ type: FrameType, _ body: [UInt8] = []) {
        self.type = type
        self.body = body
    }

    /// The frame as it goes on the wire.
    public var encoded: [UInt8] {
        var writer = WireWriter(reserving: Self.headerSize + body.count)
        writer.u32(UInt32(truncatingIfNeeded: body.count + 1))
        writer.u8(type.rawValue)
        writer.rest(body)
        return writer.bytes
    }

    /// Appends the encoded frame to `output` without building an
    /// intermediate array (the data path).
    public static func append(_ type: FrameType, body: UnsafeBufferPointer<UInt8>, to output: inout [UInt8]) {
        var writer = WireWriter(reserving: 0)
        writer.u32(UInt32(truncatingIfNeeded: body.count + 1))
        writer.u8(type.rawValue)
        output.append(contentsOf: writer.bytes)
        output.append(contentsOf: body)
    }
}

/// Cuts a byte stream into frames. Feed it what the socket gave, then take
/// frames until it returns nil. It holds at most one partial frame, and
/// refuses a length over the limit before buffering its body.
public struct FrameDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0
    public let maximumPayload: UInt32

    public init(maximumPayload: UInt32 = AgentFrame.maximumPayload) {
        self.maximumPayload = maximumPayload
    }

    /// Bytes received but not yet returned as frames.
    public var bufferedCount: Int { buffer.count - start }

    public mutating func append(_ bytes: UnsafeBufferPointer<UInt8>) {
        compact()
        buffer.append(contentsOf: bytes)
    }

    public mutating func append(_ bytes: [UInt8]) {
        compact()
        buffer.append(contentsOf: bytes)
    }

    /// The next whole frame, or nil when more bytes are needed.
    public mutating func next() throws(AgentProtocolError) -> AgentFrame? {
        guard bufferedCount >= 4 else { return nil }
        var length: UInt32 = 0
        for index in 0..<4 { length |= UInt32(buffer[start + index]) << (8 * UInt32(index)) }
        guard length > 0 else { throw .emptyFrame }
        guard length - 1 <= maximumPayload else { throw .frameTooLarge(length: length - 1, limit: maximumPayload) }
        guard bufferedCount >= 4 + Int(length) else { return nil }
        let rawType = buffer[start + 4]
        guard let type = FrameType(rawValue: rawType) else { throw .unknownFrameType(rawType) }
        let body = Array(buffer[(start + 5)..<(start + 4 + Int(length))])
        start += 4 + Int(length)
        return AgentFrame(type, body)
    }

    /// Drops consumed bytes once they are most of the buffer.
    private mutating func compact() {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
    }
}
