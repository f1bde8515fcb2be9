import Glibc
import UffdHandler

// swiftlet-uffd-handler SOCKET MEMORY_FILE: a page-fault handler for
// PUT /snapshot/load with {"mem_backend": {"backend_type": "Uffd",
// "backend_path": SOCKET}}, as Firecracker's example handlers
// (docs/snapshots.md, "Uffd backend"). Exit status 0 when the VMM hung up,
// 1 on an error, 2 on bad usage.

func report(_ line: String) { PageFaultHandler.writeStandardError("swiftlet-uffd-handler: \(line)\n") }

let arguments = CommandLine.arguments
if arguments.count == 2, arguments[1] == "--help" || arguments[1] == "-h" {
    print("usage: swiftlet-uffd-handler SOCKET MEMORY_FILE\n\nListens on SOCKET for one VMM loading a snapshot with the Uffd memory backend and\nfills its guest's pages from MEMORY_FILE (the snapshot's memory file) until it exits.")
    exit(0)
}
guard arguments.count == 3 else {
    report("\(UffdHandlerError.usage("expected 2 arguments, got \(arguments.count - 1)"))")
    exit(2)
}
do {
    let handler = try PageFaultHandler(memoryPath: arguments[2], log: { report($0) })
    report("listening on \(arguments[1])")
    let statistics = try handler.run(socketPath: arguments[1], killPeerOnError: true)
    report("the VMM hung up: \(statistics.pagesCopied) pages copied, \(statistics.alreadyPresent) already present, \(statistics.retries) retries, \(statistics.removals) removals, \(statistics.ignoredEvents) ignored")
    exit(0)
} catch {
    report("\(error)")
    exit(1)
}
