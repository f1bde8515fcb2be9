import Foundation
import Testing

/// `--trace-exits FILE` (docs/performance.md) on a real boot.
@Suite("exit traces", .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct ExitTraceTests {
    @Test("--trace-exits writes the run's phases and each exit by port with counts and times; an unwritable path fails before the guest runs")
    func traceFile() throws {
        let path = NSTemporaryDirectory() + "trace-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).txt"
        defer { unlink(path) }
        let result = try ProcessTests.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--serial", "none", "--trace-exits", path])
        #expect(result.status == 0, "\(result)")
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasPrefix("# swiftlet-vmm --trace-exits: ") && text.contains("guest powered off"), "\(text)")
        for phase in ["process start -> VM built", "VM built -> first KVM_RUN", "first KVM_RUN -> last exit", "vCPU time in the VMM handling exits"] {
            #expect(text.contains(phase), "\(phase) missing: \(text)")
        }
        // hello writes its line to COM1 (port 0x3f8) and powers off through the ACPI sleep port.
        let serial = text.split(separator: "\n").first { $0.hasPrefix("io_out") && $0.contains("port 0x3f8 ") }
        let count = serial.flatMap { $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).first }.flatMap { Int($0) }
        #expect((count ?? 0) >= "KIT hello PASS".count, "\(serial ?? "no io_out 0x3f8 row")")
        let bad = try ProcessTests.run("swiftlet-vmm", ["--kernel", try KitGuest.program("hello"), "--serial", "none", "--trace-exits", "/nonexistent/dir/trace.txt"])
        #expect(bad.status != 0 && bad.stderr.contains("--trace-exits /nonexistent/dir/trace.txt"), "\(bad)")
    }
}
