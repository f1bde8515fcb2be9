import Foundation
import QMP
import SwiftletClient
import Testing
@testable import SwiftletDaemon

/// The drivers' define-time rules, QEMU's command line and how each ending
/// of a QEMU run is reported: no QEMU or /dev/kvm needed.
@Suite("hypervisor drivers")
struct DriverTests {
    static func decode(_ json: String) throws -> VMDefinition {
        try SwiftletJSON.decoder.decode(VMDefinition.self, from: Data(json.utf8))
    }

    /// The refusal's message, or nil when the definition is accepted.
    static func refusal(_ json: String) throws -> String? {
        do throws(DaemonError) { _ = try DefinitionValidator.validate(try decodeDefinition(json)) } catch { return error.description }
        return nil
    }

    static func decodeDefinition(_ json: String) throws(DaemonError) -> VMDefinition {
        do { return try decode(json) } catch { throw .badRequest("\(error)") }
    }

    @Test("a definition without hypervisor is a Swiftlet VM, and the field round-trips")
    func defaults() throws {
        let old = try Self.decode(#"{"name":"w","kernel":"/k"}"#)
        #expect(old.hypervisor == "swiftlet")
        let qemu = try Self.decode(#"{"name":"q","hypervisor":"qemu","firmware":"uefi","disks":[{"path":"/d.qcow2","format":"qcow2"}],"qemu":{"machine":"q35","devices":["virtio-rng-pci"]}}"#)
        let again = try SwiftletJSON.decoder.decode(VMDefinition.self, from: SwiftletJSON.encoder().encode(qemu))
        #expect(again == qemu)
        #expect(again.kernel == nil && again.firmware == "uefi" && again.qemu?.devices == ["virtio-rng-pci"])
        #expect(throws: UnknownKeyError.self) { try Self.decode(#"{"name":"q","hypervisor":"qemu","kernel":"/k","qemu":{"accel":"tcg"}}"#) }
    }

    @Test("each driver's rules refuse what it cannot run, naming the field and what is valid")
    func refusals() throws {
        let cases: [(String, String)] = [
            (#"{"name":"a","hypervisor":"xen","kernel":"/k"}"#, "expected one of swiftlet, qemu"),
            (#"{"name":"a","firmware":"uefi","disks":[{"path":"/d"}]}"#, "hypervisor: qemu"),
            (#"{"name":"a","kernel":"/k","firmware":"bios"}"#, "needs hypervisor: qemu"),
            (#"{"name":"a","kernel":"/k","qemu":{"machine":"q35"}}"#, "qemu section is for hypervisor: qemu"),
            (#"{"name":"a","hypervisor":"qemu"}"#, "neither kernel nor firmware"),
            (#"{"name":"a","hypervisor":"qemu","kernel":"/k","firmware":"uefi","disks":[{"path":"/d"}]}"#, "both kernel and firmware"),
            (#"{"name":"a","hypervisor":"qemu","firmware":"coreboot","disks":[{"path":"/d"}]}"#, "expected uefi or bios"),
            (#"{"name":"a","hypervisor":"qemu","firmware":"uefi"}"#, "no disks"),
            (#"{"name":"a","hypervisor":"qemu","firmware":"bios","cmdline":"x","disks":[{"path":"/d"}]}"#, "go with a kernel"),
            (#"{"name":"a","hypervisor":"qemu","kernel":"/k","qemu":{"machine":"q35,kernel=/etc/shadow"}}"#, "qemu.machine"),
            (#"{"name":"a","hypervisor":"qemu","kernel":"/k","qemu":{"cpu":"-host"}}"#, "qemu.cpu"),
            (#"{"name":"a","hypervisor":"qemu","kernel":"/k","qemu":{"devices":["loader,addr=0"]}}"#, "device 'loader' is not allowed"),
            (#"{"name":"a","hypervisor":"qemu","kernel":"/k","qemu":{"devices":["VGA,romfile=vgabios.bin"]}}"#, "property 'romfile'"),
            (#"{"name":"a","hypervisor":"qemu","kernel":"/k","qemu":{"devices":["virtio-rng-pci id=x"]}}"#, "qemu.devices[0]"),
        ]
        for (json, expected) in cases {
            let message = try Self.refusal(json)
            #expect(message?.contains(expected) == true, "\(json) -> \(message ?? "accepted")")
        }
        #expect(try Self.refusal(#"{"name":"a","hypervisor":"qemu","kernel":"/k","qemu":{"machine":"pc-q35-7.2","cpu":"host,+x2apic","devices":["virtio-rng-pci,max-bytes=1024"]}}"#) == nil)
        #expect(try Self.refusal(#"{"name":"a","hypervisor":"qemu","firmware":"uefi","disks":[{"path":"/d.qcow2","format":"qcow2"}]}"#) == nil)
    }

    static func launch(_ definition: VMDefinition, jail: JailConfiguration? = nil, chroot: String? = nil) -> LaunchContext {
        LaunchContext(definition: definition, directory: RunDirectory(path: "/state/vms/\(definition.name)"), jail: jail,
                      chrootDirectory: chroot, restoring: false, path: { $0 })
    }

    /// The values following each occurrence of `option`.
    static func values(_ option: String, in arguments: [String]) -> [String] {
        zip(arguments, arguments.dropFirst()).filter { $0.0 == option }.map(\.1)
    }

    @Test("a kernel-booted QEMU VM gets q35 with KVM, the console on stdio, two QMP sockets and its disks and NICs on virtio-pci")
    func kernelCommandLine() throws {
        var definition = VMDefinition(name: "web", hypervisor: "qemu", cpus: 2, memoryMiB: 256, kernel: "/img/vmlinux", initrd: "/img/initrd",
                                      cmdline: "console=ttyS0", disks: [.init(path: "/img/root.qcow2", format: "qcow2", id: "root"),
                                                                        .init(path: "/img/data.raw", readonly: true)],
                                      nics: [.init(network: "default", mac: "52:54:00:00:00:01")], onReboot: "shutdown")
        definition.nics[0].tap = "swltap3"
        let arguments = try QEMUDriver(binary: "/usr/bin/qemu-system-x86_64").arguments(Self.launch(definition))
        #expect(Self.values("-machine", in: arguments) == ["q35"])
        #expect(Self.values("-accel", in: arguments) == ["kvm"])
        #expect(Self.values("-smp", in: arguments) == ["2"] && Self.values("-m", in: arguments) == ["256M"])
        #expect(Self.values("-cpu", in: arguments) == [QEMUDriver.defaultCPU])
        #expect(arguments.contains("-nodefaults") && Self.values("-display", in: arguments) == ["none"])
        #expect(Self.values("-chardev", in: arguments) == ["stdio,id=console,signal=off"])
        #expect(Self.values("-qmp", in: arguments) == ["unix:/state/vms/web/qmp.sock,server=on,wait=off", "unix:/state/vms/web/qmp-events.sock,server=on,wait=off"])
        #expect(Self.values("-action", in: arguments) == ["reboot=shutdown"])
        #expect(Self.values("-kernel", in: arguments) == ["/img/vmlinux"] && Self.values("-initrd", in: arguments) == ["/img/initrd"])
        #expect(Self.values("-append", in: arguments) == ["console=ttyS0"])
        #expect(Self.values("-drive", in: arguments) == ["file=/img/root.qcow2,format=qcow2,if=none,id=disk0",
                                                         "file=/img/data.raw,format=raw,if=none,id=disk1,readonly=on"])
        #expect(Self.values("-netdev", in: arguments) == ["tap,id=net0,ifname=swltap3,script=no,downscript=no"])
        #expect(Self.values("-device", in: arguments) == ["virtio-blk-pci,drive=disk0,disable-legacy=on,serial=root", "virtio-blk-pci,drive=disk1,disable-legacy=on",
                                                          "virtio-net-pci,netdev=net0,disable-legacy=on,mac=52:54:00:00:00:01"])
        #expect(!arguments.contains("-runas") && !arguments.contains("-bios"))
    }

    @Test("a UEFI VM boots disks[0] on q35 with OVMF's code read-only and its own variable store; jailed, QEMU drops to the jail user in an empty root under seccomp")
    func firmwareCommandLine() throws {
        let firmware = NSTemporaryDirectory() + "ovmf-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let state = NSTemporaryDirectory() + "state-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: firmware); try? FileManager.default.removeItem(atPath: state) }
        try FileManager.default.createDirectory(atPath: firmware, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        try Data("code".utf8).write(to: URL(fileURLWithPath: firmware + "/" + QEMUDriver.firmwareCode))
        try Data("vars".utf8).write(to: URL(fileURLWithPath: firmware + "/" + QEMUDriver.firmwareVariables))
        let definition = VMDefinition(name: "win", hypervisor: "qemu", memoryMiB: 2048, kernel: nil, firmware: "uefi",
                                      qemu: .init(devices: ["virtio-tablet-pci"]), disks: [.init(path: "/img/win.qcow2", format: "qcow2")],
                                      console: "none")
        var context = Self.launch(definition, jail: JailConfiguration(jailerBinary: "/unused", chrootBase: "/jails"), chroot: "/jails/qemu/win")
        context.directory = RunDirectory(path: state)
        let arguments = try QEMUDriver(binary: "/usr/bin/qemu-system-x86_64", firmwareDirectory: firmware).arguments(context)
        #expect(Self.values("-machine", in: arguments) == ["q35"])
        #expect(Self.values("-chardev", in: arguments) == ["null,id=console"])
        #expect(Self.values("-drive", in: arguments) == ["if=pflash,format=raw,unit=0,readonly=on,file=\(firmware)/\(QEMUDriver.firmwareCode)",
                                                         "if=pflash,format=raw,unit=1,file=\(state)/OVMF_VARS.fd",
                                                         "file=/img/win.qcow2,format=qcow2,if=none,id=disk0"])
        #expect(Self.values("-device", in: arguments) == ["virtio-blk-pci,drive=disk0,disable-legacy=on,bootindex=0", "virtio-tablet-pci"])
        #expect(try String(contentsOfFile: state + "/OVMF_VARS.fd", encoding: .utf8) == "vars")
        #expect(Self.values("-runas", in: arguments) == ["64064:64064"] && Self.values("-chroot", in: arguments) == ["/jails/qemu/win"])
        #expect(Self.values("-sandbox", in: arguments).first?.hasPrefix("on,") == true)
        #expect(!arguments.contains("-kernel") && !arguments.contains("-action"))
        // Without OVMF installed: a clear error naming the package.
        #expect(throws: DaemonError.self) {
            try QEMUDriver(binary: "/usr/bin/qemu-system-x86_64", firmwareDirectory: "/nonexistent").arguments(context)
        }
    }

    @Test("QMP events and QEMU's exit become the same states and reasons Swiftlet VMs have")
    func outcomes() {
        let driver = QEMUDriver()
        func note(_ name: String, _ data: [String: QMPValue] = [:], status: String? = nil) -> ExitNote? {
            QEMUDriver.exitNote(for: QMPEvent(name: name, data: data), status: { status })
        }
        #expect(note("SHUTDOWN", ["guest": true, "reason": "guest-shutdown"]) == ExitNote(crashed: false, reason: "the guest powered off"))
        #expect(note("SHUTDOWN", ["guest": true, "reason": "guest-reset"])?.reason == "the guest rebooted (on_reboot: shutdown)")
        #expect(note("SHUTDOWN", ["guest": true, "reason": "guest-panic"])?.crashed == true)
        #expect(note("STOP", status: "internal-error")?.reason.contains("KVM internal error") == true)
        #expect(note("STOP", status: "paused") == nil)
        #expect(note("RESET", ["guest": true]) == nil)

        let exited: Int32 = 0, killed: Int32 = SIGKILL, failed: Int32 = 1 << 8
        #expect(driver.outcome(status: exited, request: nil, stderrTail: "", note: note("SHUTDOWN", ["reason": "guest-shutdown"])) == (.shutOff, "the guest powered off"))
        #expect(driver.outcome(status: exited, request: .shutdown, stderrTail: "", note: note("SHUTDOWN", ["reason": "guest-shutdown"])) == (.shutOff, "shut down"))
        #expect(driver.outcome(status: exited, request: .destroy, stderrTail: "", note: note("SHUTDOWN", ["reason": "host-signal"])) == (.shutOff, "destroyed"))
        #expect(driver.outcome(status: exited, request: nil, stderrTail: "", note: note("SHUTDOWN", ["reason": "host-signal"])).1.contains("from outside swiftletd"))
        #expect(driver.outcome(status: exited, request: nil, stderrTail: "", note: note("SHUTDOWN", ["reason": "guest-panic"])) == (.crashed, "the guest panicked"))
        #expect(driver.outcome(status: killed, request: nil, stderrTail: "", note: nil) == (.crashed, "qemu-system-x86_64 was killed by SIGKILL"))
        #expect(driver.outcome(status: killed, request: .destroy, stderrTail: "", note: nil).0 == .shutOff)
        let failure = driver.outcome(status: failed, request: nil, stderrTail: "qemu-system-x86_64: -drive file=/x: Could not open", note: nil)
        #expect(failure.0 == .crashed && failure.1.contains("status 1") && failure.1.contains("Could not open"), "\(failure)")
        // A crash noted before the exit wins over whatever follows (the quit QEMU is then told).
        #expect(driver.outcome(status: exited, request: nil, stderrTail: "", note: ExitNote(crashed: true, reason: "QMP failed: x")).0 == .crashed)
        // Re-adopted (no exit status): the last SHUTDOWN event says why.
        #expect(driver.outcome(status: nil, request: nil, stderrTail: "", note: note("SHUTDOWN", ["reason": "guest-shutdown"])) == (.shutOff, "the guest powered off"))
    }
}
