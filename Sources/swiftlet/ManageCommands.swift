import ArgumentParser
import Foundation
import Glibc
import SwiftletClient
import Yams

/// Options every daemon verb takes.
struct DaemonOptions: ParsableArguments {
    @Option(name: .long, help: "swiftletd's socket (default: $SWIFTLET_SOCKET, else /run/swiftlet/swiftletd.sock).")
    var socket: String?

    @Flag(name: .long, help: "Print JSON instead of a table or text.")
    var json = false

    var client: SwiftletAPIClient { client(timeout: 60) }

    /// Snapshots and restores write or map the guest's whole RAM: they get longer.
    func client(timeout: Double) -> SwiftletAPIClient {
        SwiftletAPIClient(socketPath: socket ?? ProcessInfo.processInfo.environment["SWIFTLET_SOCKET"] ?? SwiftletAPIClient.defaultSocket,
                          timeout: timeout)
    }

    func printJSON(_ value: some Encodable) throws {
        print(String(decoding: try SwiftletJSON.encoder(pretty: true).encode(value), as: UTF8.self))
    }

    /// `value` as JSON with --json, else the line `text`.
    func report(_ value: some Encodable, _ text: @autoclosure () -> String) throws {
        if json { try printJSON(value) } else { print(text()) }
    }
}

/// Exit statuses of the daemon verbs (docs/swiftletd.md).
enum ExitStatus {
    static let failed: Int32 = 1       // the daemon refused the request (bad input) or the operation failed
    static let noSuchVM: Int32 = 3     // no VM of that name
    static let wrongState: Int32 = 4   // conflict: already defined, running, not running...
    static let unreachable: Int32 = 5  // swiftletd is not running or not reachable
}

/// Runs a daemon verb: errors become one line on stderr and a documented status.
func withDaemon(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let failure as SwiftletAPIClient.Failure {
        FileHandle.standardError.write(Data("swiftlet: \(failure.description)\n".utf8))
        switch failure {
        case .api(let status, _) where status == 404: throw ExitCode(ExitStatus.noSuchVM)
        case .api(let status, _) where status == 409: throw ExitCode(ExitStatus.wrongState)
        case .unreachable: throw ExitCode(ExitStatus.unreachable)
        default: throw ExitCode(ExitStatus.failed)
        }
    }
}

enum Format {
    static func memory(_ mib: Int) -> String { mib % 1024 == 0 ? "\(mib / 1024)G" : "\(mib)M" }
    static func bytes(_ count: Int?) -> String {
        guard let count else { return "-" }
        return count >= 1 << 30 ? String(format: "%.1fG", Double(count) / Double(1 << 30)) : String(format: "%.1fM", Double(count) / Double(1 << 20))
    }
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
    static func state(_ info: VMInfo) -> String { info.state.rawValue.replacingOccurrences(of: "_", with: " ") }
}

/// A definition file (JSON or YAML) as JSON bytes, for the daemon to check.
func definitionJSON(fromFile path: String) throws -> Data {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ValidationError("cannot read '\(path)'")
    }
    if path.hasSuffix(".json") { return data }
    let text = String(decoding: data, as: UTF8.self)
    if text.drop(while: \.isWhitespace).first == "{" { return data }
    let object: Any?
    do { object = try Yams.load(yaml: text) } catch {
        throw ValidationError("'\(path)' is neither JSON nor valid YAML: \(error)")
    }
    guard let object, JSONSerialization.isValidJSONObject(object) else {
        throw ValidationError("'\(path)' does not hold a definition (a mapping with name, kernel, ...)")
    }
    return try JSONSerialization.data(withJSONObject: object)
}

struct Define: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Define a VM from a JSON or YAML file (docs/swiftletd.md shows the format).",
        discussion: """
            Each entry of nics takes tap: NAME (a tap you made) or network: NAME (a swiftletd \
            network), and optionally mac, id, queues (1-16 queue pairs, default 1: multiqueue \
            virtio-net, like libvirt's <driver queues='N'/>) and mtu (68-65535, offered to the \
            guest, like libvirt's <mtu size='N'/>). For example:
              nics:
                - { network: default, queues: 4, mtu: 9000 }
            """)
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The definition file.") var file: String
    func run() throws {
        let body = try definitionJSON(fromFile: file)
        try withDaemon {
            let info = try daemon.client.define(json: body)
            if daemon.json { try daemon.printJSON(info) } else { print("defined \(info.definition.name) (uuid \(info.definition.uuid ?? "-"))") }
        }
    }
}

struct Undefine: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a VM's definition (the VM must be shut off).")
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
    func run() throws {
        try withDaemon {
            try daemon.client.undefine(name)
            if !daemon.json { print("undefined \(name)") } else { print("{}") }
        }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List running VMs (--all: every defined VM).")
    @OptionGroup var daemon: DaemonOptions
    @Flag(name: .shortAndLong, help: "Include VMs that are not running.") var all = false
    func run() throws {
        try withDaemon {
            let vms = try daemon.client.list().filter { all || $0.pid != nil }
            if daemon.json { try daemon.printJSON(vms); return }
            print(Format.table(["NAME", "HYPERVISOR", "STATE", "CPUS", "MEMORY", "PID", "REASON"], vms.map {
                [$0.definition.name, $0.definition.hypervisor, Format.state($0), String($0.definition.cpus), Format.memory($0.definition.memoryMiB),
                 $0.pid.map(String.init) ?? "-", $0.reason ?? ""]
            }))
        }
    }
}

/// start, shutdown, reboot, destroy, pause, resume.
protocol LifecycleVerb: ParsableCommand {
    var daemon: DaemonOptions { get }
    var name: String { get }
    static var verb: String { get }
    static var done: String { get }
    var query: String { get }
}

extension LifecycleVerb {
    var query: String { "" }
    func perform() throws -> VMInfo {
        var result: VMInfo?
        try withDaemon {
            let info = try daemon.client.action(name, Self.verb, query: query)
            result = info
            if daemon.json { try daemon.printJSON(info) } else {
                print("\(name): \(Self.done) (\(Format.state(info))\(info.reason.map { ", " + $0 } ?? ""))")
            }
        }
        return result!
    }
    func run() throws { _ = try perform() }
}

struct Start: LifecycleVerb {
    static let configuration = CommandConfiguration(abstract: "Start a defined VM.")
    static let verb = "start", done = "started"
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
    @Flag(help: "Attach to its console after starting (Ctrl-] detaches).") var console = false
    func run() throws {
        _ = try perform()
        if console { try ConsoleAttach(daemon: daemon, name: name).run() }
    }
}

struct Shutdown: LifecycleVerb {
    static let configuration = CommandConfiguration(abstract: "Ask the guest to power off (ACPI power button).",
        discussion: "Without the VMM control API, the VM is stopped with SIGTERM instead.")
    static let verb = "shutdown", done = "shutdown requested"
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
    // Whole seconds: the daemon refuses fractions and anything past 600 (wait=3.0 included).
    @Option(help: "Whole seconds (0 to 600) to wait for the guest to power off.") var wait: Int = 0
    @Flag(help: "Destroy the VM if it has not powered off after --wait seconds.") var force = false
    var query: String { "wait=\(wait)&force=\(force)" }
}

struct Reboot: LifecycleVerb {
    static let configuration = CommandConfiguration(abstract: "Reboot a running VM.")
    static let verb = "reboot", done = "reboot requested"
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
}

struct Destroy: LifecycleVerb {
    static let configuration = CommandConfiguration(abstract: "Stop a VM at once (SIGTERM to its VMM, SIGKILL after 5 s); the definition stays.")
    static let verb = "destroy", done = "destroyed"
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
}

struct Pause: LifecycleVerb {
    static let configuration = CommandConfiguration(abstract: "Pause a running VM's vCPUs.")
    static let verb = "pause", done = "paused"
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
}

struct Resume: LifecycleVerb {
    static let configuration = CommandConfiguration(abstract: "Resume a paused VM.")
    static let verb = "resume", done = "resumed"
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a VM's definition and state.")
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
    func run() throws {
        try withDaemon {
            let info = try daemon.client.get(name)
            if daemon.json { try daemon.printJSON(info); return }
            let d = info.definition
            var rows: [(String, String)] = [
                ("Name", d.name), ("UUID", d.uuid ?? "-"), ("Hypervisor", d.hypervisor), ("State", Format.state(info)), ("Reason", info.reason ?? "-"),
                ("PID", info.pid.map(String.init) ?? "-"), ("vCPUs", String(d.cpus)), ("Memory", Format.memory(d.memoryMiB)),
                ("Kernel", d.kernel ?? "-"), ("Firmware", d.firmware ?? "-"), ("Initrd", d.initrd ?? "-"), ("Command line", d.cmdline ?? "-"),
                ("Console", d.console), ("On reboot", d.onReboot), ("Autostart", d.autostart ? "yes" : "no"),
                ("Console log", info.consoleLog), ("Control API", info.controlAPI ? "yes" : "no"),
            ]
            for (index, disk) in d.disks.enumerated() { rows.append(("Disk \(index)", (disk.volume.map { "volume " + $0 } ?? disk.path ?? "-") + (disk.format.map { " (\($0))" } ?? "") + (disk.readonly ? " (read-only)" : ""))) }
            for (index, nic) in d.nics.enumerated() {
                rows.append(("NIC \(index)", (nic.network.map { "network " + $0 } ?? nic.tap ?? "-") + (nic.mac.map { " " + $0 } ?? "")
                    + (nic.queuePairs > 1 ? " (\(nic.queuePairs) queues)" : "") + (nic.mtu.map { " (MTU \($0))" } ?? "")))
            }
            if let limits = d.limits {
                rows.append(("Limits", "cpu \(limits.cpuPercent.map { "\($0)%" } ?? "-"), memory \(limits.memoryMiB.map { Format.memory($0) } ?? "-")"))
            }
            if let cgroup = info.cgroup { rows.append(("Cgroup", cgroup)) }
            if let qemu = d.qemu {
                rows.append(("QEMU", ["machine \(qemu.machine ?? "default")", "cpu \(qemu.cpu ?? "default")"].joined(separator: ", ")
                    + (qemu.devices.isEmpty ? "" : ", devices " + qemu.devices.joined(separator: " "))))
            }
            for (key, value) in rows { print((key + ":").padding(toLength: 14, withPad: " ", startingAt: 0) + value) }
        }
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a running VM's CPU time, memory and VMM counters.")
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
    func run() throws {
        try withDaemon {
            let stats = try daemon.client.stats(name)
            if daemon.json { try daemon.printJSON(stats); return }
            print("State:       \(stats.state.rawValue)")
            print("PID:         \(stats.pid.map(String.init) ?? "-")")
            print("Uptime:      \(stats.uptimeSeconds.map { String(format: "%.1f s", $0) } ?? "-")")
            print("CPU time:    \(stats.cpuSeconds.map { String(format: "%.2f s", $0) } ?? "-")")
            print("VMM RSS:     \(Format.bytes(stats.rssBytes))")
            print("Threads:     \(stats.threads.map(String.init) ?? "-")")
            for (key, value) in (stats.vmmMetrics ?? [:]).sorted(by: { $0.key < $1.key }) {
                print("\(key): \(value == value.rounded() ? String(Int(value)) : String(value))")
            }
        }
    }
}

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a VM's console log.")
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
    @Option(help: "At most this many bytes from the end.") var bytes = 65536
    @Flag(name: .shortAndLong, help: "Keep printing new output (Ctrl-C stops).") var follow = false
    func run() throws {
        try withDaemon {
            let data = try daemon.client.consoleLog(name, bytes: bytes)
            FileHandle.standardOutput.write(data)
            guard follow else { return }
            let path = try daemon.client.get(name).consoleLog
            guard let handle = FileHandle(forReadingAtPath: path) else { return }
            var offset = (try? handle.seekToEnd()) ?? 0
            while true {
                let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64) ?? 0
                if size < offset { offset = 0 }  // rotated
                try? handle.seek(toOffset: offset)
                let more = handle.readDataToEndOfFile()
                offset += UInt64(more.count)
                if !more.isEmpty { FileHandle.standardOutput.write(more) }
                usleep(200_000)
            }
        }
    }
}

struct Console: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Attach to a running VM's serial console (Ctrl-] detaches).")
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
    func run() throws { try ConsoleAttach(daemon: daemon, name: name).run() }
}

/// Follows the VM's console log and sends keys to its console input FIFO;
/// the terminal is raw so Ctrl-C reaches the guest. Ctrl-] detaches.
struct ConsoleAttach {
    static let detachByte: UInt8 = 0x1d
    let daemon: DaemonOptions
    let name: String

    func run() throws {
        var info: VMInfo?
        try withDaemon { info = try daemon.client.get(name) }
        guard let info, info.pid != nil, let input = info.consoleInput else {
            FileHandle.standardError.write(Data("swiftlet: VM '\(name)' is not running with a console; `swiftlet start \(name)` starts it, `swiftlet logs \(name)` shows its last output\n".utf8))
            throw ExitCode(ExitStatus.wrongState)
        }
        let output = open(info.consoleLog, O_RDONLY | O_CLOEXEC)
        let keys = open(input, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
        guard output >= 0, keys >= 0 else {
            FileHandle.standardError.write(Data("swiftlet: cannot open the console of '\(name)' (\(String(cString: strerror(errno)))); run swiftlet as swiftletd's user\n".utf8))
            throw ExitCode(ExitStatus.failed)
        }
        defer { close(output); close(keys) }
        // Show the recent screen, then follow.
        let size = lseek(output, 0, SEEK_END)
        lseek(output, max(0, size - 2048), SEEK_SET)
        FileHandle.standardError.write(Data("Connected to \(name) (Ctrl-] detaches)\r\n".utf8))

        var saved = termios()
        let isTerminal = isatty(STDIN_FILENO) == 1 && tcgetattr(STDIN_FILENO, &saved) == 0
        if isTerminal {
            var raw = saved
            cfmakeraw(&raw)
            raw.c_oflag = saved.c_oflag
            tcsetattr(STDIN_FILENO, TCSANOW, &raw)
        }
        defer { if isTerminal { tcsetattr(STDIN_FILENO, TCSANOW, &saved) } }

        var buffer = [UInt8](repeating: 0, count: 4096)
        var stdinOpen = true
        var lastCheck = Date()
        var offset = lseek(output, 0, SEEK_CUR)
        loop: while true {
            // Guest output: read what was appended (from the start again after a rotation).
            var status = stat()
            if fstat(output, &status) == 0, status.st_size < offset { lseek(output, 0, SEEK_SET); offset = 0 }
            while true {
                let count = read(output, &buffer, buffer.count)
                if count <= 0 { break }
                offset += count
                _ = buffer.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, count) }
            }
            var poller = pollfd(fd: stdinOpen ? STDIN_FILENO : -1, events: Int16(POLLIN), revents: 0)
            if poll(&poller, 1, 50) > 0, poller.revents != 0 {
                let count = read(STDIN_FILENO, &buffer, buffer.count)
                if count <= 0 { stdinOpen = false; if !isTerminal { break loop } ; continue }
                var forward = Array(buffer[0..<count])
                if let detach = forward.firstIndex(of: Self.detachByte) {
                    forward = Array(forward[..<detach])
                    _ = forward.withUnsafeBytes { write(keys, $0.baseAddress, forward.count) }
                    break loop
                }
                _ = forward.withUnsafeBytes { write(keys, $0.baseAddress, forward.count) }
            }
            if Date().timeIntervalSince(lastCheck) > 1 {
                lastCheck = Date()
                if let now = try? daemon.client.get(name), now.pid == nil {
                    // Drain the last output before saying why.
                    while true {
                        let count = read(output, &buffer, buffer.count)
                        if count <= 0 { break }
                        _ = buffer.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, count) }
                    }
                    FileHandle.standardError.write(Data("\r\n\(name) is \(Format.state(now))\(now.reason.map { ": " + $0 } ?? "")\r\n".utf8))
                    return
                }
            }
        }
        FileHandle.standardError.write(Data("\r\nDetached from \(name)\r\n".utf8))
    }
}

struct Edit: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Edit a VM's definition in $EDITOR (JSON); it applies at the next start.")
    @OptionGroup var daemon: DaemonOptions
    @Argument var name: String
    func run() throws {
        try withDaemon {
            let info = try daemon.client.get(name)
            let original = try SwiftletJSON.encoder(pretty: true).encode(info.definition)
            let path = NSTemporaryDirectory() + "swiftlet-\(name)-\(getpid()).json"
            try original.write(to: URL(fileURLWithPath: path))
            defer { unlink(path) }
            let editor = ProcessInfo.processInfo.environment["VISUAL"] ?? ProcessInfo.processInfo.environment["EDITOR"] ?? "vi"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "\(editor) \"$1\"", "sh", path]
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw ValidationError("\(editor) exited with status \(process.terminationStatus); nothing changed") }
            guard let edited = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read back \(path)") }
            if edited == original { print("\(name): no change"); return }
            let updated = try daemon.client.update(name, json: edited)
            if daemon.json { try daemon.printJSON(updated) } else { print("\(name): definition updated\(updated.reason.map { " (" + $0 + ")" } ?? "")") }
        }
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print VM state changes as they happen (Ctrl-C stops).")
    @OptionGroup var daemon: DaemonOptions
    func run() throws {
        try withDaemon {
            try daemon.client.events { event in
                if daemon.json, let data = try? SwiftletJSON.encoder().encode(event) {
                    print(String(decoding: data, as: UTF8.self))
                } else {
                    let time = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: event.time))
                    print("\(time) \(event.name) \(event.state.rawValue)\(event.reason.map { ": " + $0 } ?? "")")
                }
                fflush(nil)
                return true
            }
        }
    }
}
