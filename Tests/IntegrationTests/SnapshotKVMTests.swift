import CKVM
import Foundation
import Glibc
import HostSystem
import KVM
import Synchronization
import Testing
@testable import VMM

/// KVM state capture and restore (the first part of snapshots): a guest is
/// paused mid-computation, its KVM state and RAM copied, and a new VM built
/// from them must finish with the answer an uninterrupted run gives.
@Suite("KVM state capture and restore", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct SnapshotKVMTests {
    /// Enough ring-3 work (a few seconds here) that a pause lands in the middle of it.
    static let rounds = 500_000_000
    static let memory: UInt64 = 64 << 20

    static func configuration(_ program: String, cpus: Int = 1, cmdline: String = "") throws -> VMConfiguration {
        VMConfiguration(kernelPath: try KitGuest.program(program), commandLine: cmdline, cpuCount: cpus,
                        memorySize: memory, serial: .none, onReboot: .exit)
    }

    /// `machine.run()` on a thread of its own.
    final class Running: Sendable {
        final class Outcome: Sendable {
            let value = Mutex<Result<VMExitReason, VMMError>?>(nil)
        }
        let machine: VirtualMachine
        private let outcome = Outcome()
        private let thread: HostThread

        init(_ machine: VirtualMachine) throws {
            self.machine = machine
            let outcome = self.outcome
            thread = try HostThread(name: "test-run") {
                let result = Result { () throws(VMMError) in try machine.run() }
                outcome.value.withLock { $0 = result }
            }
        }

        /// Waits for the run to end; stops it first if it has not within `seconds`.
        func finish(within seconds: Double) throws -> VMExitReason {
            let deadline = Date.now.addingTimeInterval(seconds)
            while outcome.value.withLock({ $0 }) == nil && Date.now < deadline { usleep(10_000) }
            if outcome.value.withLock({ $0 }) == nil {
                machine.stop()
                machine.resume()
            }
            thread.join()
            guard let result = outcome.value.withLock({ $0 }) else { throw KitGuest.KitError(message: "the run left no result") }
            return try result.get()
        }
    }

    static func waitFor(_ text: String, in output: CapturingSerialOutput, seconds: Double) -> Bool {
        let deadline = Date.now.addingTimeInterval(seconds)
        while !output.text.contains(text) {
            if Date.now >= deadline { return false }
            usleep(10_000)
        }
        return true
    }

    static func resultLine(_ output: String) -> String? {
        output.split(whereSeparator: \.isNewline).first { $0.hasPrefix("KIT resume result=") }.map(String.init)
    }

    @Test("a guest paused mid-computation resumes in a new VM from the captured KVM state and RAM, and finishes with the uninterrupted run's result",
          arguments: [1, 2])
    func resumeMidComputation(cpus: Int) throws {
        let configuration = try Self.configuration("resume", cpus: cpus, cmdline: "rounds=\(Self.rounds)")

        // The reference: the same guest, never interrupted.
        let started = Date.now
        let referenceOutput = CapturingSerialOutput()
        let reference = try VirtualMachine(configuration: configuration, serialOutput: referenceOutput)
        #expect(try reference.run() == .poweredOff)
        let expected = try #require(Self.resultLine(referenceOutput.text), "reference output: \(referenceOutput.text)")
        let referenceSeconds = Date.now.timeIntervalSince(started)

        // The original: paused a while into its computation, then captured.
        let originalOutput = CapturingSerialOutput()
        let original = try Running(VirtualMachine(configuration: configuration, serialOutput: originalOutput))
        #expect(Self.waitFor("KIT resume started", in: originalOutput, seconds: 30), "output: \(originalOutput.text)")
        usleep(UInt32(min(referenceSeconds / 3, 1) * 1_000_000))
        #expect(original.machine.pause())
        let state = try original.machine.captureKVMState()
        let image = try original.machine.copyGuestMemory()
        #expect(Self.resultLine(originalOutput.text) == nil,
                "the computation ended before the pause (\(referenceSeconds) s uninterrupted): raise `rounds`")
        // Mid-computation means in ring 3, in `fold`.
        let sregs = try #require(state.vcpus[0].decodedSpecialRegisters)
        #expect(sregs.cs.dpl == 3, "vCPU 0 was paused at CPL \(sregs.cs.dpl)")
        #expect(state.vcpus.count == cpus)
        #expect(state.vcpus[0].msrs.contains { $0.index == 0x10 }, "IA32_TSC is among the saved MSRs")
        #expect(try original.finish(within: 0) == .stoppedByUser)

        // The restored VM: no kernel is loaded, it goes on from the capture.
        let restoredOutput = CapturingSerialOutput()
        let restored = try Running(VirtualMachine(configuration: configuration, restoring: state, memoryImage: image,
                                                  serialOutput: restoredOutput))
        let reason = try restored.finish(within: max(60, referenceSeconds * 10))
        #expect(reason == .poweredOff, "output: \(restoredOutput.text)")
        #expect(Self.resultLine(restoredOutput.text) == expected, "output: \(restoredOutput.text)")
        #expect(!restoredOutput.text.contains("KIT resume started"), "the restored guest started over: \(restoredOutput.text)")
    }

    @Test("restoring a captured state into a new VM gives back the same registers, LAPIC and MP state")
    func roundTrip() throws {
        let configuration = try Self.configuration("hello", cpus: 2)
        let source = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
        // Never run: once paused, no vCPU needs to park and the capture reads the boot state.
        #expect(source.pause())
        let state = try source.captureKVMState()
        let image = try source.copyGuestMemory()

        let copy = try VirtualMachine(configuration: configuration, restoring: state, memoryImage: image, serialOutput: CapturingSerialOutput())
        #expect(copy.pause())
        let again = try copy.captureKVMState()
        for (saved, restored) in zip(state.vcpus, again.vcpus) {
            #expect(saved.regs == restored.regs, "vCPU \(saved.id) regs")
            #expect(saved.sregs == restored.sregs, "vCPU \(saved.id) sregs")
            #expect(saved.lapic == restored.lapic, "vCPU \(saved.id) LAPIC")
            #expect(saved.mpState == restored.mpState, "vCPU \(saved.id) MP state")
            #expect(saved.debugRegs == restored.debugRegs, "vCPU \(saved.id) debug registers")
            #expect(saved.xcrs == restored.xcrs, "vCPU \(saved.id) XCRs")
            #expect(saved.msrs.map(\.index) == restored.msrs.map(\.index), "vCPU \(saved.id) MSR list")
            // The MTRR default type (set at boot) is saved though KVM does not list it, and comes back.
            let defaultType = { (state: VCPUState) in state.msrs.first { $0.index == 0x2FF }?.value }
            #expect(defaultType(saved) == (1 << 11) | 6 && defaultType(restored) == defaultType(saved), "vCPU \(saved.id) MTRR default type")
        }
        #expect(state.vm.ioAPIC == again.vm.ioAPIC)
        #expect(state.vm.picMaster == again.vm.picMaster)
        #expect(try copy.copyGuestMemory() == image)
    }

    /// The saved `struct kvm_clock_data`'s clock, flags and wall time.
    static func clock(_ state: MachineKVMState) throws -> kvm_clock_data {
        try #require(state.vm.clock.count == MemoryLayout<kvm_clock_data>.size)
        // SAFETY: the bytes are exactly one kvm_clock_data (checked above).
        return state.vm.clock.withUnsafeBytes { $0.loadUnaligned(as: kvm_clock_data.self) }
    }

    @Test("clock_realtime: the capture records the wall time; a restore with it advances the KVM clock by the wall time since, one without resumes it")
    func clockRealtime() throws {
        let configuration = try Self.configuration("hello")
        let source = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
        #expect(source.pause())
        var state = try source.captureKVMState()
        let image = try source.copyGuestMemory()
        var saved = try Self.clock(state)
        #expect(saved.flags & UInt32(KVM_CLOCK_REALTIME) != 0 && saved.realtime > 1_700_000_000 * 1_000_000_000, "the wall time is recorded")

        // As if the snapshot had been taken 30 s ago.
        saved.realtime -= 30_000_000_000
        // SAFETY: the buffer is exactly one kvm_clock_data.
        state.vm.clock.withUnsafeMutableBytes { $0.storeBytes(of: saved, as: kvm_clock_data.self) }
        func restoredClock(realtime: Bool) throws -> UInt64 {
            state.clockRealtime = realtime
            let copy = try VirtualMachine(configuration: configuration, restoring: state, memoryImage: image, serialOutput: CapturingSerialOutput())
            #expect(copy.pause())
            return try Self.clock(copy.captureKVMState()).clock
        }
        let resumed = try restoredClock(realtime: false)
        #expect(resumed >= saved.clock && resumed < saved.clock + 10_000_000_000, "without clock_realtime the clock goes on from \(saved.clock): \(resumed)")
        let advanced = try restoredClock(realtime: true)
        #expect(advanced >= saved.clock + 30_000_000_000 && advanced < saved.clock + 40_000_000_000,
                "with clock_realtime the clock is 30 s on from \(saved.clock): \(advanced)")

        // A snapshot without the wall time is refused before anything is set.
        saved.flags &= ~UInt32(KVM_CLOCK_REALTIME)
        // SAFETY: as above.
        state.vm.clock.withUnsafeMutableBytes { $0.storeBytes(of: saved, as: kvm_clock_data.self) }
        #expect { try restoredClock(realtime: true) } throws: { error in
            "\(error)".contains("has no wall time")
        }
    }

    @Test("capture is refused unless the VM is paused")
    func refusesUnpaused() throws {
        let machine = try VirtualMachine(configuration: try Self.configuration("hello"), serialOutput: CapturingSerialOutput())
        #expect { try machine.captureKVMState() } throws: { error in
            guard case VMMError.notPaused = error else { return false }
            return true
        }
        #expect { try machine.copyGuestMemory() } throws: { error in
            guard case VMMError.notPaused = error else { return false }
            return true
        }
    }

    @Test("a state with a wrong-sized blob, another vCPU count or another RAM size is refused with a typed error")
    func refusesMismatchedState() throws {
        let configuration = try Self.configuration("hello")
        let source = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
        #expect(source.pause())
        let state = try source.captureKVMState()
        let image = try source.copyGuestMemory()

        var shortSregs = state
        shortSregs.vcpus[0].sregs.removeLast()
        #expect {
            _ = try VirtualMachine(configuration: configuration, restoring: shortSregs, memoryImage: image, serialOutput: CapturingSerialOutput())
        } throws: { error in
            guard case let VMMError.kvm(.stateSizeMismatch(part, expected, actual)) = error else { return false }
            return part == "vCPU 0 sregs" && expected == MemoryLayout<kvm_sregs>.size && actual == expected - 1
        }

        var longPIT = state
        longPIT.vm.pit.append(0)
        #expect {
            _ = try VirtualMachine(configuration: configuration, restoring: longPIT, memoryImage: image, serialOutput: CapturingSerialOutput())
        } throws: { error in
            guard case let VMMError.kvm(.stateSizeMismatch(part, _, _)) = error else { return false }
            return part == "PIT"
        }

        var twoVCPUs = configuration
        twoVCPUs.cpuCount = 2
        #expect {
            _ = try VirtualMachine(configuration: twoVCPUs, restoring: state, memoryImage: image, serialOutput: CapturingSerialOutput())
        } throws: { error in
            guard case let VMMError.snapshotMismatch(part, saved, configured) = error else { return false }
            return part == "the vCPU count" && saved == "1" && configured == "2"
        }

        var moreRAM = configuration
        moreRAM.memorySize = Self.memory * 2
        #expect {
            _ = try VirtualMachine(configuration: moreRAM, restoring: state, memoryImage: image, serialOutput: CapturingSerialOutput())
        } throws: { error in
            guard case let VMMError.snapshotMismatch(part, _, _) = error else { return false }
            return part == "the RAM layout"
        }
    }
}
