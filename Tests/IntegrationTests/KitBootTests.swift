import Glibc
import Testing
@testable import VMM

/// Boots guest-kit programs on /dev/kvm. Each does a few hundred instructions
/// at CPL0 and its work at CPL3, so it runs in well under a second even where
/// CPL0 is emulated.
@Suite("Kit guests on KVM", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct KitBootTests {
    @Test("hello prints through the UART and powers off through ACPI", arguments: [1, 2])
    func hello(cpus: Int) throws {
        let (reason, output) = try KitGuest.boot("hello", cpus: cpus)
        #expect(output.contains("KIT hello PASS"), "serial output: \(output)")
        #expect(reason == .poweredOff)
    }

    @Test("the e820/PVH memory map matches the configured memory", arguments: [64, 128, 512, 5120] as [UInt64])
    func memoryMap(megabytes: UInt64) throws {
        let (reason, output) = try KitGuest.boot("memmap", memory: megabytes << 20)
        #expect(reason == .poweredOff)
        #expect(output.contains("KIT memmap PASS"), "serial output: \(output)")
        // RAM seen by the guest: everything but the 385 KiB legacy hole (0x9FC00-0x100000).
        let expected = (megabytes << 20) - (0x100000 - 0x9FC00)
        #expect(output.contains("ram=\(expected)"), "serial output: \(output)")
    }

    @Test("ACPI tables announce one processor per vCPU", arguments: [1, 2, 4])
    func acpiProcessors(cpus: Int) throws {
        let (reason, output) = try KitGuest.boot("acpi", cpus: cpus)
        #expect(reason == .poweredOff)
        #expect(output.contains("KIT acpi cpus=\(cpus)"), "serial output: \(output)")
        #expect(output.contains("KIT acpi PASS"), "serial output: \(output)")
    }

    @Test("every vCPU comes online through INIT/SIPI", arguments: [2, 4])
    func smp(cpus: Int) throws {
        let (reason, output) = try KitGuest.boot("smp", cpus: cpus)
        #expect(reason == .poweredOff)
        #expect(output.contains("online=\(cpus)"), "serial output: \(output)")
        #expect(output.contains("KIT smp PASS"), "serial output: \(output)")
    }

    @Test("ring-3 computation gives the known answer")
    func compute() throws {
        let (reason, output) = try KitGuest.boot("compute")
        #expect(reason == .poweredOff)
        #expect(output.contains("KIT compute PASS"), "serial output: \(output)")
    }

    @Test("ring-3 port writes exit to the VMM and the loop completes")
    func exitLoop() throws {
        let (reason, output) = try KitGuest.boot("exitloop", cmdline: "iterations=2000")
        #expect(reason == .poweredOff)
        #expect(output.contains("KIT exitloop iterations=2000"), "serial output: \(output)")
    }

    @Test("a guest reboot ends the run with a reboot request")
    func reboot() throws {
        let (reason, output) = try KitGuest.boot("reboot")
        #expect(reason == .rebootRequested)
        #expect(output.contains("KIT reboot requested"), "serial output: \(output)")
    }

    @Test("a triple fault is reported as a crash with registers, not a hang")
    func tripleFault() throws {
        let (reason, output) = try KitGuest.boot("fault")
        #expect(output.contains("KIT fault"), "serial output: \(output)")
        guard case let .crashed(report) = reason else {
            Issue.record("expected a crash, got \(reason)")
            return
        }
        #expect(report.contains("vCPU 0"))
        #expect(report.contains("rip="))
    }

    @Test("SIGTERM ends the run even when a reboot was requested first (an API Reboot loop must not keep a signalled VMM alive)")
    func signalBeatsPendingReboot() throws {
        var configuration = VMConfiguration(kernelPath: try KitGuest.program("idle"), serial: .none)
        configuration.cpuCount = 1
        let machine = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
        // SIGTERM waits, blocked, on this thread, as it does on the VMM's main
        // thread while a reboot rebuilds the machine.
        var mask = sigset_t()
        sigemptyset(&mask)
        sigaddset(&mask, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &mask, nil)
        pthread_kill(pthread_self(), SIGTERM)
        #expect(machine.requestStop(.rebootRequested))
        let reason = try machine.run()
        // Whatever happened, take a SIGTERM still pending off this thread.
        var info = siginfo_t()
        var zero = timespec()
        while sigtimedwait(&mask, &info, &zero) == SIGTERM {}
        #expect(reason == .stoppedBySignal(SIGTERM), "the run ended with \(reason)")
    }
}

