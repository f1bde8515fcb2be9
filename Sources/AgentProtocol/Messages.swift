/// Error codes of an `error` frame.
public enum AgentErrorCode: UInt32, Sendable {
    /// The request was malformed or not allowed here.
    case badRequest = 1
    /// A path or program does not exist.
    case notFound = 2
    /// The guest refused access (EACCES, EPERM).
    case permissionDenied = 3
    /// Another system call failed; the message names it and its errno.
    case system = 4
    /// The client's protocol version is not supported.
    case unsupportedVersion = 5
    /// The agent is at its limit of connections; retry later.
    case busy = 6
}

/// How an exec'd process ended.
public enum ExitStatus: Equatable, Sendable {
    case exited(Int32)
    case signaled(Int32)

    /// The shell's convention: the code, or 128 + the signal.
    public var shellStatus: Int32 {
        switch self {
        case .exited(let code): return code
        case .signaled(let signal): return 128 + signal
        }
    }
}

/// What the guest says about itself (`info`).
public struct GuestInfo: Equatable, Sendable {
    /// uname: sysname, release, version and machine, space-separated.
    public var kernel: String
    public var hostname: String
    public var uptimeMilliseconds: UInt64
    public var memoryTotalBytes: UInt64
    public var memoryAvailableBytes: UInt64
    public var cpus: UInt32
    /// One entry per address: "eth0 10.0.0.2/24" (IPv4 and IPv6, no loopback).
    public var addresses: [String]
    public var agentVersion: String

    public init(kernel: String, hostname: String, uptimeMilliseconds: UInt64, memoryTotalBytes: UInt64,
                memoryAvailableBytes: UInt64, cpus: UInt32, addresses: [String], agentVersion: String) {
        self.kernel = kernel
        self.hostname = hostname
        self.uptimeMilliseconds = uptimeMilliseconds
        self.memoryTotalBytes = memoryTotalBytes
        self.memoryAvailableBytes = memoryAvailableBytes
        self.cpus = cpus
        self.addresses = addresses
        self.agentVersion = agentVersion
    }
}

/// An exec request: what to run and how.
public struct ExecRequest: Equatable, Sendable {
    /// At most this many argv entries, and as many environment entries.
    public static let maximumArguments = 4096

    /// The program and its arguments; argv[0] without a '/' is looked up in
    /// PATH (the request's, else /bin:/sbin:/usr/bin:/usr/sbin), then as a
    /// busybox applet.
    public var arguments: [String]
    /// "NAME=value" entries added to (or replacing in) the agent's environment.
    public var environment: [String]
    /// The working directory; empty means "/".
    public var workingDirectory: String
    /// Run on a new pseudo-terminal (stdout and stderr are then one stream,
    /// sent as `stdout` frames).
    public var terminal: Bool
    /// Forward stdin; without, the process's stdin is /dev/null.
    public var forwardsStdin: Bool
    public var rows: UInt16
    public var columns: UInt16

    public init(arguments: [String], environment: [String] = [], workingDirectory: String = "",
                terminal: Bool = false, forwardsStdin: Bool = false, rows: UInt16 = 24, columns: UInt16 = 80) {
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.terminal = terminal
        self.forwardsStdin = forwardsStdin
        self.rows = rows
        self.columns = columns
    }
}

/// Every frame, decoded. `frame` encodes, `init(frame:)` decodes and checks
/// every field (a frame from the peer is untrusted input).
public enum AgentMessage: Equatable, Sendable {
    case hello(version: UInt16)
    case helloReply(version: UInt16, agentVersion: String)
    case error(code: AgentErrorCode, message: String)
    case exec(ExecRequest)
    case started(pid: UInt32)
    case stdin([UInt8])
    case stdout([UInt8])
    case stderr([UInt8])
    case signal(Int32)
    case resize(rows: UInt16, columns: UInt16)
    case exit(ExitStatus)
    case putFile(path: String, mode: UInt32, size: UInt64)
    case getFile(path: String)
    case data([UInt8])
    case done
    case fileInfo(mode: UInt32, size: UInt64)
    case info
    case infoReply(GuestInfo)
    case shutdown(reboot: Bool)
    case ping(token: UInt64)
    case pong(token: UInt64)

    public var type: FrameType {
        switch self {
        case .hello: return .hello
        case .helloReply: return .helloReply
        case .error: return .error
        case .exec: return .exec
        case .started: return .started
        case .stdin: return .stdin
        case .stdout: return .stdout
        case .stderr: return .stderr
        case .signal: return .signal
        case .resize: return .resize
        case .exit: return .exit
        case .putFile: return .putFile
        case .getFile: return .getFile
        case .data: return .data
        case .done: return .done
        case .fileInfo: return .fileInfo
        case .info: return .info
        case .infoReply: return .infoReply
        case .shutdown: return .shutdown
        case .ping: return .ping
        case .pong: return .pong
        }
    }

    public var frame: AgentFrame {
        var writer = WireWriter()
        switch self {
        case .hello(let version):
            writer.u16(version)
        case .helloReply(let version, let agentVersion):
            writer.u16(version)
            writer.string(agentVersion)
        case .error(let code, let message):
            writer.u32(code.rawValue)
            writer.string(message)
        case .exec(let request):
            writer.strings(request.arguments)
            writer.strings(request.environment)
            writer.string(request.workingDirectory)
            writer.u8((request.terminal ? 1 : 0) | (request.forwardsStdin ? 2 : 0))
            writer.u16(request.rows)
            writer.u16(request.columns)
        case .started(let pid):
            writer.u32(pid)
        case .stdin(let bytes), .stdout(let bytes), .stderr(let bytes), .data(let bytes):
            writer.rest(bytes)
        case .signal(let number):
            writer.i32(number)
        case .resize(let rows, let columns):
            writer.u16(rows)
            writer.u16(columns)
        case .exit(let status):
            switch status {
            case .exited(let code):
                writer.u8(0)
                writer.i32(code)
            case .signaled(let signal):
                writer.u8(1)
                writer.i32(signal)
            }
        case .putFile(let path, let mode, let size):
            writer.string(path)
            writer.u32(mode)
            writer.u64(size)
        case .getFile(let path):
            writer.string(path)
        case .done, .info:
            break
        case .fileInfo(let mode, let size):
            writer.u32(mode)
            writer.u64(size)
        case .infoReply(let info):
            writer.string(info.kernel)
            writer.string(info.hostname)
            writer.u64(info.uptimeMilliseconds)
            writer.u64(info.memoryTotalBytes)
            writer.u64(info.memoryAvailableBytes)
            writer.u32(info.cpus)
            writer.strings(info.addresses)
            writer.string(info.agentVersion)
        case .shutdown(let reboot):
            writer.u8(reboot ? 1 : 0)
        case .ping(let token), .pong(let token):
            writer.u64(token)
        }
        return AgentFrame(type, writer.bytes)
    }

    public init(frame: AgentFrame) throws(AgentProtocolError) {
        var reader = WireReader(frame.body)
        switch frame.type {
        case .hello:
            self = .hello(version: try reader.u16("version"))
        case .helloReply:
            self = .helloReply(version: try reader.u16("version"), agentVersion: try reader.string("agent version"))
        case .error:
            let raw = try reader.u32("code")
            guard let code = AgentErrorCode(rawValue: raw) else { throw .invalidField(field: "code", value: UInt64(raw)) }
            self = .error(code: code, message: try reader.string("message"))
        case .exec:
            let arguments = try reader.strings("argv", limit: ExecRequest.maximumArguments)
            guard !arguments.isEmpty else { throw .invalidField(field: "argv count", value: 0) }
            let environment = try reader.strings("environment", limit: ExecRequest.maximumArguments)
            let directory = try reader.string("working directory")
            let flags = try reader.u8("flags")
            guard flags & ~3 == 0 else { throw .invalidField(field: "flags", value: UInt64(flags)) }
            let rows = try reader.u16("rows")
            let columns = try reader.u16("columns")
            self = .exec(ExecRequest(arguments: arguments, environment: environment, workingDirectory: directory,
                                     terminal: flags & 1 != 0, forwardsStdin: flags & 2 != 0, rows: rows, columns: columns))
        case .started:
            self = .started(pid: try reader.u32("pid"))
        case .stdin:
            self = .stdin(reader.rest())
        case .stdout:
            self = .stdout(reader.rest())
        case .stderr:
            self = .stderr(reader.rest())
        case .data:
            self = .data(reader.rest())
        case .signal:
            let number = try reader.i32("signal")
            guard number > 0 && number < 65 else { throw .invalidField(field: "signal", value: UInt64(UInt32(bitPattern: number))) }
            self = .signal(number)
        case .resize:
            self = .resize(rows: try reader.u16("rows"), columns: try reader.u16("columns"))
        case .exit:
            let kind = try reader.u8("exit kind")
            let value = try reader.i32("exit value")
            switch kind {
            case 0: self = .exit(.exited(value))
            case 1: self = .exit(.signaled(value))
            default: throw .invalidField(field: "exit kind", value: UInt64(kind))
            }
        case .putFile:
            self = .putFile(path: try reader.string("path"), mode: try reader.u32("mode"), size: try reader.u64("size"))
        case .getFile:
            self = .getFile(path: try reader.string("path"))
        case .done:
            self = .done
        case .fileInfo:
            self = .fileInfo(mode: try reader.u32("mode"), size: try reader.u64("size"))
        case .info:
            self = .info
        case .infoReply:
            self = .infoReply(GuestInfo(
                kernel: try reader.string("kernel"), hostname: try reader.string("hostname"),
                uptimeMilliseconds: try reader.u64("uptime"), memoryTotalBytes: try reader.u64("memory total"),
                memoryAvailableBytes: try reader.u64("memory available"), cpus: try reader.u32("cpus"),
                addresses: try reader.strings("addresses", limit: 4096), agentVersion: try reader.string("agent version")))
        case .shutdown:
            let action = try reader.u8("action")
            guard action <= 1 else { throw .invalidField(field: "action", value: UInt64(action)) }
            self = .shutdown(reboot: action == 1)
        case .ping:
            self = .ping(token: try reader.u64("token"))
        case .pong:
            self = .pong(token: try reader.u64("token"))
        }
        try reader.finish(frame.type)
    }
}
