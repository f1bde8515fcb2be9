import AgentClient
import AgentProtocol
import ArgumentParser
import Foundation
import Glibc
import SwiftletClient

/// Where the agent verbs find a VM's agent: `unix:PATH` is a VMM's vsock
/// socket (`swiftlet-vmm --vsock cid=3,uds=PATH`); anything else is a VM of
/// swiftletd's, reached through `POST /v1/vms/{name}/agent`.
struct AgentTarget: ExpressibleByArgument {
    let vsockPath: String?
    let name: String

    init?(argument: String) {
        guard !argument.isEmpty else { return nil }
        if argument.hasPrefix("unix:") {
            guard argument.count > 5 else { return nil }
            vsockPath = String(argument.dropFirst(5))
        } else {
            vsockPath = nil
        }
        name = argument
    }

    static let help = "a swiftletd VM's name, or unix:PATH for the vsock socket of a swiftlet-vmm started with --vsock cid=N,uds=PATH"
}

struct AgentOptions: ParsableArguments {
    @Option(name: .long, help: "Seconds to wait for the guest agent to answer (connecting and the handshake).")
    var agentTimeout: Double = 10

    @Option(name: .long, help: "swiftletd's socket (default: $SWIFTLET_SOCKET, else /run/swiftlet/swiftletd.sock).")
    var socket: String?

    func validate() throws {
        guard agentTimeout > 0 && agentTimeout <= 600 else {
            throw ValidationError("--agent-timeout \(agentTimeout): expected seconds from 0 to 600")
        }
    }

    func client(_ target: AgentTarget) -> AgentClient {
        if let path = target.vsockPath { return AgentClient(endpoint: .vsockSocket(path: path), timeout: agentTimeout) }
        let daemon = socket ?? ProcessInfo.processInfo.environment["SWIFTLET_SOCKET"] ?? SwiftletAPIClient.defaultSocket
        return AgentClient(endpoint: .daemon(socketPath: daemon, vm: target.name), timeout: agentTimeout)
    }
}

/// Runs an agent verb: a failure is one line on stderr and status 125
/// (statuses below that are the command's own).
func withAgent(_ body: () throws -> Int32) -> Never {
    do {
        Foundation.exit(try body())
    } catch {
        FileHandle.standardError.write(Data("swiftlet: \(error)\n".utf8))
        Foundation.exit(125)
    }
}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in a running VM through its guest agent.",
        discussion: """
            The command runs in the guest as root through swiftlet-agent (docs/agent.md); argv goes \
            as given (no shell: use `sh -c '...'` for one). swiftlet exits with the command's status, \
            128+N when signal N killed it, and 125 when the agent could not be reached.

            Without -t, Ctrl-C, SIGTERM and SIGHUP are forwarded to the command; with -t the local \
            terminal is put in raw mode (Ctrl-C is a byte the guest's terminal turns into SIGINT) \
            and window size changes follow.

            Examples:
              swiftlet exec web -- uname -a                     a VM of swiftletd's
              swiftlet exec -it web -- sh                       an interactive shell
              tar c . | swiftlet exec -i web -- tar x -C /root
              swiftlet exec unix:/tmp/v.sock -- uname -a        a swiftlet-vmm's vsock socket, no daemon
            """)

    @Flag(name: [.customShort("i"), .long], help: "Forward this process's stdin to the command (else it reads /dev/null).")
    var interactive = false

    @Flag(name: [.customShort("t"), .long], help: "Run the command on a pseudo-terminal (stdout and stderr become one stream).")
    var tty = false

    @Option(name: [.customShort("e"), .customLong("env")], help: "NAME=value for the command's environment (repeatable).")
    var environment: [String] = []

    @Option(name: [.customShort("w"), .customLong("workdir")], help: "The command's working directory in the guest (default /root).")
    var workingDirectory = "/root"

    @OptionGroup var agent: AgentOptions

    @Argument(help: ArgumentHelp("The VM: \(AgentTarget.help).", valueName: "vm"))
    var target: AgentTarget

    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (after --).")
    var command: [String] = []

    func validate() throws {
        if command.first == "--" { return }
        guard !command.isEmpty else { throw ValidationError("give the command after --, e.g. swiftlet exec VM -- uname -a") }
        for entry in environment where !entry.contains("=") || entry.hasPrefix("=") {
            throw ValidationError("--env '\(entry)': expected NAME=value")
        }
    }

    func run() throws {
        let argv = command.first == "--" ? Array(command.dropFirst()) : command
        guard !argv.isEmpty else { throw ValidationError("give the command after --, e.g. swiftlet exec VM -- uname -a") }
        let size = AgentClient.terminalSize() ?? (24, 80)
        let request = ExecRequest(arguments: argv, environment: environment, workingDirectory: workingDirectory,
                                  terminal: tty, forwardsStdin: interactive || tty, rows: size.rows, columns: size.columns)
        let client = agent.client(target)
        withAgent {
            let raw = tty ? RawTerminal() : nil
            defer { raw?.restore() }
            let signals = tty ? [SIGWINCH, SIGTERM, SIGHUP] : [SIGINT, SIGTERM, SIGHUP, SIGQUIT]
            AgentClient.blockForwardedSignals(signals)
            let status = try client.exec(request, streams: .init(stdin: 0, stdout: 1, stderr: 2, forwardedSignals: signals))
            return status.shellStatus
        }
    }
}

/// The local terminal in raw mode for a TTY session, restored by `restore`
/// (and at exit, should the process end another way).
final class RawTerminal {
    private var saved = termios()
    private let active: Bool

    init() {
        active = isatty(0) == 1 && tcgetattr(0, &saved) == 0
        guard active else { return }
        var raw = saved
        cfmakeraw(&raw)
        tcsetattr(0, TCSANOW, &raw)
    }

    func restore() {
        if active { tcsetattr(0, TCSANOW, &saved) }
    }
}

struct Copy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp",
        abstract: "Copy a file into or out of a running VM through its guest agent.",
        discussion: """
            One of SOURCE and DESTINATION is VM:/path in the guest, the other a local path. The \
            guest's file is replaced whole (written beside it, synced, then renamed), so a failed \
            copy leaves the old one; a local destination is written the same way. The mode is the \
            source's unless --mode says otherwise.

            Examples:
              swiftlet cp ./app web:/usr/local/bin/app
              swiftlet cp web:/var/log/messages ./messages
              swiftlet cp --mode 600 ./key unix:/tmp/v.sock:/root/key
            """)

    @Option(name: .long, help: "The destination's permission bits, in octal (e.g. 755).")
    var mode: String?

    @OptionGroup var agent: AgentOptions

    @Argument(help: "The file to copy: a local path or VM:/path.")
    var source: String

    @Argument(help: "Where to: a local path or VM:/path.")
    var destination: String

    /// "web:/etc/hostname" or "unix:/tmp/v.sock:/etc/hostname" → (target,
    /// "/etc/hostname"): the guest path starts at the last ":/". A local
    /// path is one with no ":" before its first "/" (`./a:b` is local).
    static func split(_ text: String) -> (AgentTarget, String)? {
        guard let colon = text.firstIndex(of: ":"), !text[..<colon].contains("/") else { return nil }
        guard let range = text.range(of: ":/", options: .backwards), range.lowerBound > text.startIndex else { return nil }
        guard let target = AgentTarget(argument: String(text[..<range.lowerBound])) else { return nil }
        return (target, String(text[text.index(after: range.lowerBound)...]))
    }

    func run() throws {
        var bits: UInt32?
        if let mode {
            guard let value = UInt32(mode, radix: 8), value <= 0o7777 else {
                throw ValidationError("--mode '\(mode)': expected octal permission bits such as 644 or 755")
            }
            bits = value
        }
        let from = Self.split(source), to = Self.split(destination)
        switch (from, to) {
        case (nil, let (target, path)?):
            withAgent {
                try agent.client(target).put(localPath: source, remotePath: path, mode: bits)
                return 0
            }
        case (let (target, path)?, nil):
            withAgent {
                try agent.client(target).get(remotePath: path, localPath: destination)
                if let bits { chmod(destination, mode_t(bits)) }
                return 0
            }
        default:
            throw ValidationError("exactly one of SOURCE and DESTINATION must be VM:/path (\(AgentTarget.help), then :/path)")
        }
    }
}

struct GuestInfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guest-info",
        abstract: "Show what a running VM's guest agent reports: kernel, uptime, memory, addresses.")

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    @OptionGroup var agent: AgentOptions

    @Argument(help: ArgumentHelp("The VM: \(AgentTarget.help).", valueName: "vm"))
    var target: AgentTarget

    func run() throws {
        let client = agent.client(target)
        let wantsJSON = json
        withAgent {
            let info = try client.info()
            if wantsJSON {
                let object: [String: Any] = [
                    "kernel": info.kernel, "hostname": info.hostname, "uptime_ms": info.uptimeMilliseconds,
                    "memory_total_bytes": info.memoryTotalBytes, "memory_available_bytes": info.memoryAvailableBytes,
                    "cpus": info.cpus, "addresses": info.addresses, "agent_version": info.agentVersion,
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                let mib = { (bytes: UInt64) in "\(bytes >> 20) MiB" }
                print("Kernel:    \(info.kernel)")
                print("Hostname:  \(info.hostname)")
                print("Uptime:    \(String(format: "%.1f", Double(info.uptimeMilliseconds) / 1000)) s")
                print("CPUs:      \(info.cpus)")
                print("Memory:    \(mib(info.memoryAvailableBytes)) available of \(mib(info.memoryTotalBytes))")
                print("Addresses: \(info.addresses.isEmpty ? "none" : info.addresses.joined(separator: ", "))")
                print("Agent:     swiftlet-agent \(info.agentVersion)")
            }
            return 0
        }
    }
}
