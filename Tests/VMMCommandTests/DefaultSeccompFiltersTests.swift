import CKVM
@_spi(Testing) import HostSystem
import Testing
@testable import VMM

@Suite("Swiftlet's default seccomp filters")
struct DefaultSeccompFiltersTests {
    typealias Kind = SeccompFilters.ThreadKind
    static let programs = (try? DefaultSeccompFilters.programs()) ?? [:]

    static func run(_ kind: Kind, _ name: String, _ arguments: [UInt64] = []) -> UInt32? {
        guard let program = programs[kind], let number = SeccompProgram.number(of: name) else { return nil }
        return SeccompProgram.evaluate(program, number: number, arguments: arguments)
    }

    static let allow = SeccompProgram.actionAllow
    static let kill = SeccompProgram.actionKillProcess

    @Test("every thread kind gets a program the kernel accepts")
    func programsBuild() throws {
        #expect(Set(Self.programs.keys) == Set(Kind.allCases))
        for (kind, program) in Self.programs {
            #expect(!program.isEmpty)
            try SeccompFilters.validate(program, category: kind.rawValue)
        }
    }

    @Test("no kind may start programs, trace, change identity or reach the network; the self test's getppid is forbidden everywhere",
          arguments: Kind.allCases)
    func forbiddenEverywhere(kind: Kind) {
        for name in ["execve", "execveat", "fork", "vfork", "ptrace", "getppid", "setuid", "mount", "chroot", "init_module",
                     "process_vm_writev", "bpf", "keyctl", "unshare", "setns", "kexec_load", "reboot"] {
            #expect(Self.run(kind, name) == Self.kill, "\(kind.rawValue) allows \(name)")
        }
        #expect(Self.run(kind, "socket", [2, 1, 0]) == Self.kill, "\(kind.rawValue) allows AF_INET sockets")
        #expect(Self.run(kind, "socket", [16, 3, 0]) == Self.kill, "\(kind.rawValue) allows netlink sockets")
        #expect(Self.run(kind, "futex") == Self.allow && Self.run(kind, "exit") == Self.allow)
    }

    @Test("vCPU threads run the guest but open no files; the API thread serves requests but runs no vCPU")
    func perKind() {
        #expect(Self.run(.vcpu, "ioctl", [7, UInt64(CKVM_RUN)]) == Self.allow)
        #expect(Self.run(.vcpu, "ioctl", [7, UInt64(CKVM_CREATE_VM)]) == Self.kill)
        #expect(Self.run(.vcpu, "openat") == Self.kill)
        #expect(Self.run(.api, "accept4") == Self.allow)
        #expect(Self.run(.api, "ioctl", [7, UInt64(CKVM_RUN)]) == Self.kill)
        #expect(Self.run(.api, "fcntl", [7, 37]) == Self.allow, "F_OFD_SETLK for PATCH /drives")
        #expect(Self.run(.api, "ioctl", [7, UInt64(CKVM_GET_XSAVE)]) == Self.allow, "capturing a paused VM's state")
        #expect(Self.run(.main, "ioctl", [7, UInt64(CKVM_SET_IRQCHIP)]) == Self.allow, "restoring a VM's state")
        #expect(Self.run(.api, "userfaultfd") == Self.allow && Self.run(.api, "ioctl", [7, UInt64(CKVM_UFFDIO_REGISTER)]) == Self.allow,
                "a load with the Uffd backend")
        #expect(Self.run(.api, "ioctl", [7, UInt64(CKVM_UFFDIO_COPY)]) == Self.kill, "the handler, not the VMM, fills pages")
        #expect(Self.run(.vcpu, "userfaultfd") == Self.kill && Self.run(.block, "userfaultfd") == Self.kill)
        #expect(Self.run(.vcpu, "ioctl", [7, UInt64(CKVM_SET_XSAVE)]) == Self.kill, "vCPU threads restore nothing")
        #expect(Self.run(.block, "pwrite64") == Self.allow)
        #expect(Self.run(.block, "openat") == Self.kill && Self.run(.block, "socket", [1, 1, 0]) == Self.kill)
        #expect(Self.run(.rng, "pwrite64") == Self.kill && Self.run(.console, "pwrite64") == Self.kill)
        #expect(Self.run(.serialOut, "ioctl", [7, UInt64(CKVM_RUN)]) == Self.kill && Self.run(.serialOut, "ppoll") == Self.allow)
        #expect(Self.run(.main, "clone3") == Self.allow && Self.run(.launcher, "clone3") == Self.allow)
        #expect(Self.run(.vcpu, "clone3") == Self.kill && Self.run(.api, "clone3") == Self.kill && Self.run(.block, "clone3") == Self.kill)
        #expect(Self.run(.vcpu, "pwrite64") == Self.kill && Self.run(.vcpu, "connect") == Self.kill, "workers' I/O stays out of the vCPU filter")
    }

    @Test("a thread's filter allows what the threads it starts need (Linux stacks the filters)", arguments: Kind.allCases)
    func parentsAllowChildren(parent: Kind) {
        for child in DefaultSeccompFilters.startedBy(parent) {
            for rule in DefaultSeccompFilters.rules(child) {
                for arguments in Self.examples(rule) {
                    #expect(Self.run(parent, rule.name, arguments) == Self.allow, "\(parent.rawValue) forbids \(rule.name)\(arguments) that \(child.rawValue) needs")
                }
            }
        }
    }

    /// Arguments that satisfy each alternative of a rule (or none when it has no checks).
    static func examples(_ rule: SeccompRule) -> [[UInt64]] {
        guard !rule.alternatives.isEmpty else { return [[]] }
        return rule.alternatives.map { checks in
            var arguments = [UInt64](repeating: 0, count: 6)
            for check in checks { arguments[check.argument] = UInt64(check.value) }
            return arguments
        }
    }
}
