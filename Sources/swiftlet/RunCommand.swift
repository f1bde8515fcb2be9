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
            status. The first such run saves a snapshot of the booted guest in the guest cache \
            (keyed by the image, the VMM and these options); later runs restore it instead of \
            booting, in about a second here instead of ~15 s. --no-snapshot boots cold (and saves \
            nothing); runs with options other than --cpus, --memory, --cmdline, --transport, --net, \
            --vsock, --rng and --enable-pci always boot cold. Other options are those of \
            swiftlet-vmm (`swiftlet-vmm --help`). Ctrl-A x quits.

            Examples:
              swiftlet run                            a shell in the default guest
              swiftlet run -- uname -a                one command (restored from a snapshot after the first run)
              swiftlet run --cpus 2 --memory 512M -- nproc
              swiftlet run --no-snapshot -- dmesg     boot cold
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
        // swiftlet's own option: the rest go to swiftlet-vmm.
        let usesSnapshot = !vmmArguments.contains("--no-snapshot")
        vmmArguments.removeAll { $0 == "--no-snapshot" }
        let userOptions = vmmArguments
        var snapshotRun: (run: SnapshotRun, coldArguments: [String])?

        let wantsHelp = vmmArguments.contains { $0 == "--help" || $0 == "-h" || $0 == "--version" }
        let namesKernel = vmmArguments.contains { ["--kernel", "--config"].contains($0) || $0.hasPrefix("--kernel=") || $0.hasPrefix("--config=") }
        if vmmArguments.contains(where: { $0 == "--help" || $0 == "-h" }) {
            // swiftlet run's own help, then swiftlet-vmm's options.
            FileHandle.standardOutput.write(Data((Run.helpMessage(columns: 100) + "\n\nThe swiftlet-vmm options:\n\n").utf8))
        }
        if !wantsHelp && !namesKernel {
            let guest = try DefaultGuest.locate()
            var commandLine = guest.commandLine
            // A --cmdline of the user's adds to the guest's own parameters.
            if let index = vmmArguments.firstIndex(of: "--cmdline"), index + 1 < vmmArguments.count {
                commandLine += " " + vmmArguments[index + 1]
                vmmArguments.removeSubrange(index...(index + 1))
            }
            let script = command.map(shellQuoted).joined(separator: " ")
            var memory: [String] = []
            if !vmmArguments.contains(where: { $0 == "--memory" || $0.hasPrefix("--memory=") }) {
                memory = ["--memory", defaultGuestMemory]
            }
            let guestFiles = ["--kernel", guest.kernel, "--initrd", guest.initrd]
            if !command.isEmpty, usesSnapshot, let binary = VMMLauncher.locate() {
                let snapshotArguments = guestFiles + ["--cmdline", commandLine + " " + SnapshotRun.commandLineParameters] + memory + vmmArguments
                if let cache = GuestSnapshotCache(guest: guest, vmmBinary: binary, userOptions: userOptions, vmmArguments: snapshotArguments) {
                    snapshotRun = (SnapshotRun(cache: cache, vmmBinary: binary, script: script), snapshotArguments)
                }
            }
            if !command.isEmpty {
                // Base64 keeps spaces and quotes intact on the kernel command line.
                commandLine += " swiftlet.cmd64=" + Data(script.utf8).base64EncodedString()
            }
            vmmArguments = guestFiles + ["--cmdline", commandLine] + memory + vmmArguments
        } else if !command.isEmpty {
            throw ValidationError("a command after -- runs in the default guest; drop --kernel/--config to use it")
        }

        // The run path ignores SIGPIPE (exec keeps it ignored for
        // swiftlet-vmm): a console reader that goes away must not kill it.
        signal(SIGPIPE, SIG_IGN)
        if command.isEmpty { try VMMLauncher.exec(vmmArguments) }
        if let (snapshot, coldArguments) = snapshotRun {
            if snapshot.cache.isComplete {
                do {
                    Foundation.exit(try snapshot.restoreAndRun())
                } catch let refused as SnapshotRun.LoadRefused {
                    FileHandle.standardError.write(Data("swiftlet: the cached snapshot did not load (\(refused)); booting cold to save a new one\n".utf8))
                    snapshot.cache.discard()
                }
            }
            Foundation.exit(try snapshot.bootSaveAndRun(vmmArguments: coldArguments))
        }
        Foundation.exit(try runGuestCommand(vmmArguments))
    }

    /// Runs the VMM as a child, copies the console to stdout, and returns
    /// the status the guest reported for the command (the VMM's own status
    /// when the guest never reported one, e.g. on a crash).
    static func runGuestCommand(_ vmmArguments: [String]) throws -> Int32 {
        guard let binary = VMMLauncher.locate() else { throw VMMLauncher.notFound }
        let session = try GuestConsoleSession(binary: binary, arguments: vmmArguments, feedsInput: false)
        _ = session.pump()
        return session.finish()
    }

    static func shellQuoted(_ word: String) -> String {
        let safe = word.allSatisfy { $0.isLetter || $0.isNumber || "-_./=:,+@%".contains($0) }
        return safe && !word.isEmpty ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
