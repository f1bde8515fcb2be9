// swiftlet-jailer: Firecracker's jailer for swiftlet-vmm (and Firecracker).
// The logic lives in the Jailer target.
import Glibc
import HostSystem
import Jailer

/// One line on stderr, unbuffered (the process may exec or exit right after).
func printLine(_ descriptor: Int32, _ text: String) {
    try? OwnedFileDescriptor(adopting: dup(descriptor)).writeAll(Array((text + "\n").utf8))
}

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments == ["--help"] || arguments == ["-h"] {
    printLine(STDOUT_FILENO, JailerArguments.usage)
    exit(0)
}
do {
    let configuration = try JailerArguments.parse(arguments)
    try Jail(configuration: configuration).run()
} catch {
    printLine(STDERR_FILENO, "swiftlet-jailer: \(error)")
    exit(1)
}
