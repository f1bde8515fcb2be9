import Testing
@testable import Jailer

@Suite("jail device nodes")
struct JailDeviceNodesTests {
    @Test("/dev/userfaultfd's minor comes from /proc/misc, as Firecracker's jailer reads it; none when the host lacks the device")
    func userfaultfdMinor() {
        let misc = """
            124 cpu_dma_latency
            257 userfaultfd
            232 kvm
            200 tun
             60 device-mapper
            """
        #expect(Jail.userfaultfdMinor(procMisc: misc) == 257)
        #expect(Jail.userfaultfdMinor(procMisc: "232 kvm\n200 tun\n") == nil)
        #expect(Jail.userfaultfdMinor(procMisc: "") == nil)
        #expect(Jail.userfaultfdMinor(procMisc: "x userfaultfd\n257 userfaultfd-old\n") == nil)
        #expect(Jail.userfaultfdMajor == 10)
    }
}
