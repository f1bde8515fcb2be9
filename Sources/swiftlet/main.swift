import ArgumentParser
import VMMCommand

/// `swiftlet`: the Swiftlet command-line tool.
struct Swiftlet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftlet",
        abstract: "Run and manage KVM virtual machines.",
        subcommands: [Run.self])
}

/// `swiftlet run`: boot a VM in the foreground, no daemon needed.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a VM in the foreground with its console on this terminal.",
        discussion: "Takes the same options as swiftlet-vmm. Ctrl-A x quits the console.")

    @OptionGroup var options: VMOptions

    func run() throws {
        let status: Int32
        do {
            status = runVM(try options.configuration()).rawValue
        } catch {
            printError("swiftlet: \(error)")
            throw ExitCode(1)
        }
        if status != 0 { throw ExitCode(status) }
    }
}

Swiftlet.main()
