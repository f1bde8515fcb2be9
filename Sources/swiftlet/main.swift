import ArgumentParser
import Foundation
import Glibc
import SwiftletVersion

/// `swiftlet`: the Swiftlet command-line tool.
struct Swiftlet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftlet",
        abstract: "Run and manage KVM virtual machines.",
        discussion: """
            Examples:
              swiftlet run                     boot the default Linux guest to a shell
              swiftlet run -- uname -a         run one command in it, exit with its status
              swiftlet run --kernel vmlinux --initrd initrd.gz --cpus 2
              swiftlet define web.yaml && swiftlet start web --console   (through swiftletd)
              swiftlet list --all
              swiftlet snapshot web before-upgrade && swiftlet restore before-upgrade --vm web --as web2

            Exit status of the daemon verbs: 0 done, 1 refused or failed (the message says why), \
            3 no such VM, 4 the VM is in the wrong state or the name is taken, 5 swiftletd is not \
            reachable, 64 bad command-line usage.
            """,
        version: "Swiftlet v\(SwiftletVersion.current)",
        subcommands: [Run.self, Define.self, Undefine.self, List.self, Start.self, Shutdown.self, Reboot.self,
                      Destroy.self, Pause.self, Resume.self, Info.self, Stats.self, Console.self, Logs.self,
                      Edit.self, Events.self, Snapshot.self, SnapshotList.self, SnapshotDelete.self, Restore.self,
                      Exec.self, Copy.self, GuestInfoCommand.self,
                      NetDefine.self, NetUndefine.self, NetStart.self, NetDestroy.self, NetList.self, NetInfo.self,
                      NetAutostart.self, DomIfAddr.self,
                      PoolDefine.self, PoolStart.self, PoolDestroy.self, PoolUndefine.self, PoolList.self,
                      VolCreate.self, VolList.self, VolInfo.self, VolDelete.self, Drivers.self])
}

/// Finds swiftlet-vmm (beside this binary, else on PATH) and replaces this process with it.
enum VMMLauncher {
    static let notFound = ValidationError("swiftlet-vmm was found neither beside swiftlet nor on PATH; build it with `swift build --product swiftlet-vmm`")

    static func locate() -> String? {
        let sibling = DefaultGuest.executableDirectory.appendingPathComponent("swiftlet-vmm").path
        if access(sibling, X_OK) == 0 { return sibling }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/swiftlet-vmm"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    static func exec(_ arguments: [String]) throws -> Never {
        guard let binary = locate() else { throw notFound }
        let argv = ([binary] + arguments).map { strdup($0) } + [nil]
        execv(binary, argv)
        throw ValidationError("cannot run \(binary): \(String(cString: strerror(errno)))")
    }
}

// `swiftlet run ...` is handled before parsing so that every swiftlet-vmm
// option (and `--`) reaches it untouched.
let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "run" {
    do {
        try RunCommand.run(Array(arguments.dropFirst()))
    } catch {
        Swiftlet.exit(withError: error)
    }
}
Swiftlet.main()
