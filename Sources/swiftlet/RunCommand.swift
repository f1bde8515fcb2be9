import ArgumentParser
import Foundation

/// `swiftlet run`: boots a VM in the foreground. With `--kernel` (or
/// `--config`) it is swiftlet-vmm under another name; without, it boots the
/// default Linux guest. `swiftlet run [options] -- CMD...` runs CMD in the
/// guest and exits with CMD's status.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a VM in the foreground with its console on this terminal.",
        discussion: """
            With no --kernel, boots the default Linux guest (built by guest/build-image on first \
            use) to a shell; `swiftlet run -- CMD...` runs CMD in it instead and exits with CMD's \
            status. Other options are those of swiftlet-vmm (`swiftlet-vmm --help`). Ctrl-A x quits.
            """)

    @Argument(parsing: .allUnrecognized, help: "Options for swiftlet-vmm, then optionally -- and a command for the guest.")
    var options: [String] = []

    func run() throws {
        try RunCommand.run(options)
    }
}

enum RunCommand {
    /// Memory for the default guest unless --memory says otherwise.
    static let defaultGuestMemory = "256M"

    static func run(_ arguments: [String]) throws -> Never {
        let split = arguments.firstIndex(of: "--")
        var vmmArguments = Array(arguments[..<(split ?? arguments.endIndex)])
        let command = split.map { Array(arguments[arguments.index(after: $0)...]) } ?? []

        let wantsHelp = vmmArguments.contains { $0 == "--help" || $0 == "-h" || $0 == "--version" }
        let namesKernel = vmmArguments.contains { ["--kernel", "--config"].contains($0) || $0.hasPrefix("--kernel=") || $0.hasPrefix("--config=") }
        if !wantsHelp && !namesKernel {
            let guest = try DefaultGuest.locate()
            var commandLine = guest.commandLine
            // A --cmdline of the user's adds to the guest's own parameters.
            if let index = vmmArguments.firstIndex(of: "--cmdline"), index + 1 < vmmArguments.count {
                commandLine += " " + vmmArguments[index + 1]
                vmmArguments.removeSubrange(index...(index + 1))
            }
            if !command.isEmpty {
                // Base64 keeps spaces and quotes intact on the kernel command line.
                let script = command.map(shellQuoted).joined(separator: " ")
                commandLine += " swiftlet.cmd64=" + Data(script.utf8).base64EncodedString()
            }
            var defaults = ["--kernel", guest.kernel, "--initrd", guest.initrd, "--cmdline", commandLine]
            if !vmmArguments.contains(where: { $0 == "--memory" || $0.hasPrefix("--memory=") }) {
                defaults += ["--memory", defaultGuestMemory]
            }
            vmmArguments = defaults + vmmArguments
        } else if !command.isEmpty {
            throw ValidationError("a command after -- runs in the default guest; drop --kernel/--config to use it")
        }

        // The run path ignores SIGPIPE (exec keeps it ignored for
        // swiftlet-vmm): a console reader that goes away must not kill it.
        signal(SIGPIPE, SIG_IGN)
        if command.isEmpty { try VMMLauncher.exec(vmmArguments) }
        Foundation.exit(try runGuestCommand(vmmArguments))
    }

    /// Runs the VMM as a child, copies the console to stdout, and returns
    /// the status the guest reported for the command (the VMM's own status
    /// when the guest never reported one, e.g. on a crash).
    static func runGuestCommand(_ vmmArguments: [String]) throws -> Int32 {
        guard let binary = VMMLauncher.locate() else { throw VMMLauncher.notFound }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = vmmArguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.standardError
        try process.run()
        var reported: Int32?
        var pending = ""
        let marker = "SWIFTLET-EXIT-STATUS="
        while true {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            FileHandle.standardOutput.write(chunk)
            pending += String(decoding: chunk, as: UTF8.self)
            while let newline = pending.firstIndex(where: { $0 == "\n" || $0 == "\r\n" }) {
                let line = pending[..<newline].trimmingCharacters(in: .whitespacesAndNewlines)
                if line.hasPrefix(marker), let status = Int32(line.dropFirst(marker.count)) { reported = status }
                pending = String(pending[pending.index(after: newline)...])
            }
        }
        process.waitUntilExit()
        if let reported, process.terminationStatus == 0 { return reported }
        return process.terminationStatus == 0 ? 1 : process.terminationStatus
    }

    static func shellQuoted(_ word: String) -> String {
        let safe = word.allSatisfy { $0.isLetter || $0.isNumber || "-_./=:,+@%".contains($0) }
        return safe && !word.isEmpty ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
