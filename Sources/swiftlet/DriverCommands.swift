import ArgumentParser
import SwiftletClient

/// `swiftlet drivers`: swiftletd's hypervisor drivers, like `virsh version`.
struct Drivers: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show swiftletd's version and its hypervisor drivers (swiftlet, qemu): binary, version, available.",
        discussion: "A definition picks its driver with `hypervisor: swiftlet` (default) or `hypervisor: qemu` (docs/drivers.md).")
    @OptionGroup var daemon: DaemonOptions
    func run() throws {
        try withDaemon {
            let info = try daemon.client.version()
            if daemon.json { try daemon.printJSON(info); return }
            print("swiftletd \(info.version)")
            print(Format.table(["DRIVER", "AVAILABLE", "VERSION", "BINARY"], info.drivers.map {
                [$0.name, $0.available ? "yes" : "no: \($0.reason ?? "")", $0.version ?? "-", $0.binary]
            }))
        }
    }
}
