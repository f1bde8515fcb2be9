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
            use) to a shell; `swiftlet run -- CMD ARGS...` runs CMD in it instead, through the guest \
            agent over vsock (docs/agent.md): stdin is forwarded, stdout and stderr are the command's \
            own, and swiftlet exits with its status (128+N when signal N killed it; Ctrl-C is \
            forwarded). The guest's console is hidden; --verbose shows it on stderr. \
            The first such run saves a snapshot of the booted guest in the guest cache \
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
              echo hi | swiftlet run -- cat           stdin reaches the command
              swiftlet run --verbose -- true          show the guest's console (kernel log) on stderr
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
        // swiftlet's own options: the rest go to swiftlet-vmm.
        let usesSnapshot = !vmmArguments.contains("--no-snapshot")
        let verbose = vmmArguments.contains("--verbose")
        vmmArguments.removeAll { $0 == "--no-snapshot" || $0 == "--verbose" }
        let userOptions = vmmArguments

        let wantsHelp = vmmArguments.contains { $0 == "--help" || $0 == "-h" || $0 == "--version" }
        let namesKernel = vmmArguments.contains { ["--kernel", "--config"].contains($0) || $0.hasPrefix("--kernel=") || $0.hasPrefix("--config=") }
        if vmmArguments.contains(where: { $0 == "--help" || $0 == "-h" }) {
            // swiftlet run's own help, then swiftlet-vmm's options.
            FileHandle.standardOutput.write(Data((Run.helpMessage(columns: 100) + "\n\nThe swiftlet-vmm options:\n\n").utf8))
        }
        if command.isEmpty || wantsHelp || namesKernel {
            if !command.isEmpty && !wantsHelp {
                throw ValidationError("a command after -- runs in the default guest; drop --kernel/--config to use it")
            }
            if !wantsHelp && !namesKernel {
                let guest = try DefaultGuest.locate()
                vmmArguments = guestArguments(guest, &vmmArguments, extraParameters: "") + vmmArguments
            }
            // The run path ignores SIGPIPE (exec keeps it ignored for
            // swiftlet-vmm): a console reader that goes away must not kill it.
            signal(SIGPIPE, SIG_IGN)
            try VMMLauncher.exec(vmmArguments)
        }

        signal(SIGPIPE, SIG_IGN)
        guard let binary = VMMLauncher.locate() else { throw VMMLauncher.notFound }
        let guest = try DefaultGuest.locate()
        let workspace = try AgentRun.Workspace()
        // The agent's vsock device: the user's own (--vsock cid=N,uds=PATH), else one in the workspace.
        var vsockPath = workspace.vsockSocket
        if let spec = optionValue("vsock", in: vmmArguments) {
            guard let uds = spec.split(separator: ",").first(where: { $0.hasPrefix("uds=") }) else {
                throw ValidationError("--vsock \(spec): expected cid=N,uds=PATH")
            }
            vsockPath = String(uds.dropFirst(4))
        } else {
            vmmArguments += ["--vsock", "cid=3,uds=\(workspace.vsockSocket)"]
        }
        let snapshot = usesSnapshot && GuestSnapshotCache.accepts(userOptions)
        let bootArguments = guestArguments(guest, &vmmArguments, extraParameters: " " + AgentRun.kernelParameters(snapshot: snapshot)) + vmmArguments
        var cache: GuestSnapshotCache?
        if snapshot {
            // The key must not change with this run's private folder.
            let keyArguments = bootArguments.map { $0.replacingOccurrences(of: workspace.path, with: "<run>") }
            cache = GuestSnapshotCache(guest: guest, vmmBinary: binary, userOptions: userOptions, vmmArguments: keyArguments)
        }
        let run = AgentRun(vmmBinary: binary, bootArguments: bootArguments, vsockPath: vsockPath, command: command, cache: cache,
                           verbose: verbose, hasDisks: optionValue("disk", in: vmmArguments) != nil, workspace: workspace)
        do {
            Foundation.exit(try run.run())
        } catch {
            FileHandle.standardError.write(Data("swiftlet: \(error)\n".utf8))
            Foundation.exit(125)
        }
    }

    /// --kernel, --initrd, --cmdline (the guest's parameters, the user's
    /// --cmdline added, then `extraParameters`) and --memory unless given;
    /// takes the user's --cmdline out of `arguments`.
    static func guestArguments(_ guest: DefaultGuest, _ arguments: inout [String], extraParameters: String) -> [String] {
        var commandLine = guest.commandLine
        if let index = arguments.firstIndex(of: "--cmdline"), index + 1 < arguments.count {
            commandLine += " " + arguments[index + 1]
            arguments.removeSubrange(index...(index + 1))
        } else if let index = arguments.firstIndex(where: { $0.hasPrefix("--cmdline=") }) {
            commandLine += " " + arguments[index].dropFirst("--cmdline=".count)
            arguments.remove(at: index)
        }
        var result = ["--kernel", guest.kernel, "--initrd", guest.initrd, "--cmdline", commandLine + extraParameters]
        if optionValue("memory", in: arguments) == nil { result += ["--memory", defaultGuestMemory] }
        return result
    }

    /// The value of `--name value` or `--name=value`.
    static func optionValue(_ name: String, in arguments: [String]) -> String? {
        for (index, argument) in arguments.enumerated() {
            if argument == "--" + name { return index + 1 < arguments.count ? arguments[index + 1] : "" }
            if argument.hasPrefix("--\(name)=") { return String(argument.dropFirst(name.count + 3)) }
        }
        return nil
    }
}
