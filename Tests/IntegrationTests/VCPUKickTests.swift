import Glibc
import KVM
import Testing
@testable import VMM

/// How other threads stop a vCPU: `immediate_exit` in kvm_run, written and
/// read with atomics through the CKVM shim (kicks never signal a thread that
/// has ended: HostThreadTests).
@Suite("vCPU kicks", .serialized, .enabled(if: KitGuest.shouldRun, KitGuest.skipReason))
struct VCPUKickTests {
    @Test("a requested exit makes the next KVM_RUN return at once, and is consumed by it")
    func immediateExit() throws {
        let configuration = VMConfiguration(kernelPath: try KitGuest.program("idle"), serial: .none)
        let machine = try VirtualMachine(configuration: configuration, serialOutput: CapturingSerialOutput())
        let vcpu = machine.vcpus[0]
        #expect(!vcpu.exitRequested)
        vcpu.requestExit()
        #expect(vcpu.exitRequested)
        #expect(try vcpu.run() == .interrupted, "KVM_RUN returned without entering the guest")
        #expect(!vcpu.exitRequested, "the request was consumed")
    }
}
