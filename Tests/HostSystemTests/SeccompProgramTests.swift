@_spi(Testing) import HostSystem
import Testing

@Suite("Seccomp programs built from allow-lists")
struct SeccompProgramTests {
    static let allow = SeccompProgram.actionAllow
    static let kill = SeccompProgram.actionKillProcess

    static func number(_ name: String) -> Int32 { SeccompProgram.number(of: name) ?? -1 }

    static let program: [UInt64] = {
        let rules = [
            SeccompRule("read"), SeccompRule("write"),
            SeccompRule.allow("ioctl", argument: 1, in: [0xAE80, 0x4040_AE75]),
            SeccompRule.allow("fcntl", argument: 1, in: [3]),
            SeccompRule.allow("fcntl", argument: 1, in: [4]),  // merged with the rule above
            SeccompRule("prctl", alternatives: [[.init(argument: 0, equals: 15), .init(argument: 2, equals: 0)]]),
            SeccompRule("mmap", alternatives: [[.init(argument: 2, equals: 0, mask: 4)]]),  // no PROT_EXEC
        ]
        return (try? SeccompProgram.build(allowing: rules)) ?? []
    }()

    func run(_ name: String, _ arguments: [UInt64] = [], architecture: UInt32 = 0xC000_003E) -> UInt32? {
        SeccompProgram.evaluate(Self.program, number: Self.number(name), arguments: arguments, architecture: architecture)
    }

    @Test("listed calls are allowed and anything else kills the process")
    func allowList() {
        #expect(!Self.program.isEmpty)
        #expect(run("read") == Self.allow && run("write") == Self.allow)
        #expect(run("openat") == Self.kill && run("execve") == Self.kill && run("getppid") == Self.kill)
        #expect(SeccompProgram.evaluate(Self.program, number: 1000) == Self.kill)
    }

    @Test("ioctl is allowed only for the listed requests, whatever the upper half of the register")
    func ioctlRequests() {
        #expect(run("ioctl", [5, 0xAE80]) == Self.allow)
        #expect(run("ioctl", [5, 0xFFFF_FFFF_4040_AE75]) == Self.allow)  // a sign-extended request
        #expect(run("ioctl", [5, 0xAE81]) == Self.kill)
        #expect(run("ioctl", [5, 0x5401]) == Self.kill)
    }

    @Test("argument checks: alternatives from merged rules, all checks of one alternative, masks")
    func argumentChecks() {
        #expect(run("fcntl", [0, 3]) == Self.allow && run("fcntl", [0, 4]) == Self.allow)
        #expect(run("fcntl", [0, 0]) == Self.kill)
        #expect(run("prctl", [15, 0, 0]) == Self.allow)
        #expect(run("prctl", [15, 0, 1]) == Self.kill)
        #expect(run("prctl", [22, 0, 0]) == Self.kill)
        #expect(run("mmap", [0, 4096, 3]) == Self.allow)
        #expect(run("mmap", [0, 4096, 7]) == Self.kill)
    }

    @Test("another architecture and x32 calls are killed")
    func architecture() {
        #expect(run("read", architecture: 0x4000_0003) == Self.kill)  // AUDIT_ARCH_I386
        #expect(SeccompProgram.evaluate(Self.program, number: 0x4000_0000) == Self.kill)  // x32 read
    }

    @Test("a generated program passes the kernel's checks and an empty list allows nothing")
    func kernelChecks() throws {
        let rules = ["read", "write", "close", "fstat", "lseek", "mmap", "mprotect", "munmap", "brk"].map { SeccompRule($0) }
        let large = try SeccompProgram.build(allowing: rules + [SeccompRule.allow("ioctl", argument: 1, in: Array(0..<40))])
        #expect(throws: Never.self) { try SeccompFilters.parse(FilterFile.bytes([("vmm", large), ("api", Self.program), ("vcpu", Self.program)])) }
        let empty = try SeccompProgram.build(allowing: [])
        #expect(SeccompProgram.evaluate(empty, number: 0) == Self.kill)
    }

    @Test("bad lists are refused with what is wrong")
    func refusals() {
        #expect(throws: SeccompProgramError.unknownSystemCall("frobnicate")) { try SeccompProgram.build(allowing: [SeccompRule("frobnicate")]) }
        #expect(throws: SeccompProgramError.argumentIndexOutOfRange(systemCall: "ioctl", index: 6)) {
            try SeccompProgram.build(allowing: [SeccompRule.allow("ioctl", argument: 6, in: [1])])
        }
        #expect(throws: SeccompProgramError.ruleTooLong(systemCall: "ioctl", instructions: 301)) {
            try SeccompProgram.build(allowing: [SeccompRule.allow("ioctl", argument: 1, in: Array(0..<100))])
        }
    }
}

