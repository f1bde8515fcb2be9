import Foundation
import Testing

/// Real Firecracker client libraries from PyPI drive swiftlet-vmm installed
/// as `firecracker` (scripts/firecracker-clients: firecracker-python, smolvm,
/// bandsox, microheart), each through its own code, in a network namespace.
/// Flows whose route another piece of work adds (vsock, MMDS, --enable-pci)
/// report SKIP until it is there; any FAIL fails this test.
@Suite("Firecracker clients from PyPI", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct FirecrackerClientTests {
    static let script = KitGuest.packageRoot.appendingPathComponent("scripts/firecracker-clients/run").path
    static let venv = KitGuest.packageRoot.appendingPathComponent(".cache/firecracker-clients/venv/bin/python").path

    @Test("every client flow passes or is skipped for a missing route", .timeLimit(.minutes(5)))
    func clients() throws {
        guard getuid() == 0 else {
            if KitGuest.isCI { Issue.record("the client flows need root (network namespace, TAP devices)") }
            print("skipping the Firecracker client flows: they need root (network namespace, TAP devices)")
            return
        }
        guard FileManager.default.isExecutableFile(atPath: Self.venv) else {
            if KitGuest.isCI { Issue.record("the clients are not installed: scripts/firecracker-clients/run --install-only (scripts/test does)") }
            print("skipping the Firecracker client flows: not installed (scripts/firecracker-clients/run --install-only)")
            return
        }
        _ = try KitGuest.program("idle")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.script)
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFTLET_VMM"] = ProcessTests.binary("swiftlet-vmm")
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        print(text)
        let summary = text.split(separator: "\n").last { $0.hasPrefix("firecracker-clients:") } ?? ""
        #expect(process.terminationStatus == 0, "\(text.suffix(4000))")
        #expect(summary.contains(" 0 failed"), "\(summary)")
        #expect(!summary.hasPrefix("firecracker-clients: 0 passed"), "at least one client ran: \(summary)")
        for line in text.split(separator: "\n") where line.hasPrefix("FAIL") { Issue.record("\(line)") }
    }
}
