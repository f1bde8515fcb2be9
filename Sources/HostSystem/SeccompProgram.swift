/// Why a seccomp allow-list cannot be turned into a BPF program.
public enum SeccompProgramError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownSystemCall(String)
    case argumentIndexOutOfRange(systemCall: String, index: Int)
    case ruleTooLong(systemCall: String, instructions: Int)
    case tooManyInstructions(Int)

    public var description: String {
        switch self {
        case let .unknownSystemCall(name): "unknown system call '\(name)'; expected an x86_64 name as strace prints it"
        case let .argumentIndexOutOfRange(name, index): "\(name): argument \(index) does not exist; expected 0 to 5"
        case let .ruleTooLong(name, count): "\(name): its checks take \(count) instructions; a BPF jump reaches at most 255"
        case let .tooManyInstructions(count): "the program has \(count) instructions; the kernel allows \(SeccompFilters.maximumInstructions)"
        }
    }
}

/// One allowed system call: always, or only when one of `alternatives`
/// matches (each a list of argument checks that must all hold).
public struct SeccompRule: Sendable, Equatable {
    /// An argument's low 32 bits, masked, equal to a value. Only the low
    /// half is compared: ioctl requests, fcntl commands, socket families and
    /// prctl options are C ints the kernel truncates, and a caller may
    /// sign-extend them.
    public struct Check: Sendable, Equatable, Hashable {
        public let argument: Int
        public let value: UInt32
        public let mask: UInt32

        public init(argument: Int, equals value: UInt32, mask: UInt32 = 0xFFFF_FFFF) {
            self.argument = argument
            self.value = value & mask
            self.mask = mask
        }
    }

    public let name: String
    /// Empty: any arguments. Otherwise at least one must match.
    public let alternatives: [[Check]]

    public init(_ name: String, alternatives: [[Check]] = []) {
        self.name = name
        self.alternatives = alternatives
    }

    /// Allowed only when argument `argument` is one of `values` (ioctl requests, fcntl commands, ...).
    public static func allow(_ name: String, argument: Int, in values: [UInt32]) -> SeccompRule {
        SeccompRule(name, alternatives: values.map { [Check(argument: argument, equals: $0)] })
    }

    /// The rule that allows what either allows (a thread under two stacked
    /// filters may only make calls both allow, so a parent's filter is the
    /// union of its own rules and its children's).
    func merged(with other: SeccompRule) -> SeccompRule {
        if alternatives.isEmpty || other.alternatives.isEmpty { return SeccompRule(name) }
        var seen = Set<[Check]>()
        return SeccompRule(name, alternatives: (alternatives + other.alternatives).filter { seen.insert($0).inserted })
    }
}

/// A classic-BPF seccomp program built from an allow-list: the architecture
/// must be x86_64, x32 calls are refused, each listed call is allowed (with
/// its argument checks) and anything else gets `defaultAction`.
public enum SeccompProgram {
    public static let actionAllow: UInt32 = 0x7FFF_0000       // SECCOMP_RET_ALLOW
    public static let actionKillProcess: UInt32 = 0x8000_0000  // SECCOMP_RET_KILL_PROCESS
    public static let auditArchX86_64: UInt32 = 0xC000_003E   // AUDIT_ARCH_X86_64
    static let x32SystemCallBit: UInt32 = 0x4000_0000          // __X32_SYSCALL_BIT

    // BPF opcodes (linux/bpf_common.h) used here.
    static let loadWord: UInt16 = 0x20         // BPF_LD | BPF_W | BPF_ABS
    static let jumpIfEqual: UInt16 = 0x15      // BPF_JMP | BPF_JEQ | BPF_K
    static let jumpIfGreaterOrEqual: UInt16 = 0x35  // BPF_JMP | BPF_JGE | BPF_K
    static let andConstant: UInt16 = 0x54      // BPF_ALU | BPF_AND | BPF_K
    static let returnConstant: UInt16 = 0x06   // BPF_RET | BPF_K

    /// A sock_filter in the kernel's (and Firecracker's file) layout.
    public static func instruction(_ code: UInt16, _ k: UInt32, jumpTrue: UInt8 = 0, jumpFalse: UInt8 = 0) -> UInt64 {
        UInt64(code) | UInt64(jumpTrue) << 16 | UInt64(jumpFalse) << 24 | UInt64(k) << 32
    }

    /// The x86_64 number of the system call strace calls `name`.
    public static func number(of name: String) -> Int32? { X86SystemCallTable.numbers[name] }

    /// Builds the program. Rules naming the same call are merged.
    public static func build(allowing rules: [SeccompRule], defaultAction: UInt32 = actionKillProcess) throws(SeccompProgramError) -> [UInt64] {
        var byNumber: [Int32: SeccompRule] = [:]
        for rule in rules {
            guard let number = number(of: rule.name) else { throw .unknownSystemCall(rule.name) }
            for check in rule.alternatives.joined() where !(0...5).contains(check.argument) {
                throw .argumentIndexOutOfRange(systemCall: rule.name, index: check.argument)
            }
            byNumber[number] = byNumber[number].map { $0.merged(with: rule) } ?? rule
        }
        var program: [UInt64] = [
            instruction(loadWord, 4),  // seccomp_data.arch
            instruction(jumpIfEqual, auditArchX86_64, jumpTrue: 1),
            instruction(returnConstant, actionKillProcess),
            instruction(loadWord, 0),  // seccomp_data.nr
            instruction(jumpIfGreaterOrEqual, x32SystemCallBit, jumpTrue: 0, jumpFalse: 1),
            instruction(returnConstant, actionKillProcess),
        ]
        for number in byNumber.keys.sorted() {
            guard let rule = byNumber[number] else { continue }
            let body = checks(rule, defaultAction: defaultAction)
            guard body.count <= 255 else { throw .ruleTooLong(systemCall: rule.name, instructions: body.count) }
            program.append(instruction(jumpIfEqual, UInt32(bitPattern: number), jumpFalse: UInt8(body.count)))
            program += body
        }
        program.append(instruction(returnConstant, defaultAction))
        guard program.count <= SeccompFilters.maximumInstructions else { throw .tooManyInstructions(program.count) }
        return program
    }

    /// The instructions after a matching syscall number: allow, or try each
    /// alternative in turn (a failed check jumps to the next one) and end
    /// with the default action. They clobber the accumulator (the number),
    /// so they always return.
    static func checks(_ rule: SeccompRule, defaultAction: UInt32) -> [UInt64] {
        guard !rule.alternatives.isEmpty else { return [instruction(returnConstant, actionAllow)] }
        var body: [UInt64] = []
        for alternative in rule.alternatives {
            var block: [UInt64] = []
            var failJumps: [Int] = []  // indices of jumps that go to the next alternative
            for check in alternative {
                block.append(instruction(loadWord, UInt32(16 + 8 * check.argument)))  // args[i], low half
                if check.mask != 0xFFFF_FFFF { block.append(instruction(andConstant, check.mask)) }
                failJumps.append(block.count)
                block.append(instruction(jumpIfEqual, check.value))
            }
            block.append(instruction(returnConstant, actionAllow))
            for index in failJumps {
                // jumpFalse counts the instructions skipped: to just past this block's return.
                let skip = block.count - index - 1
                block[index] |= UInt64(UInt8(clamping: skip)) << 24
            }
            body += block
        }
        body.append(instruction(returnConstant, defaultAction))
        return body
    }
}

extension SeccompProgram {
    /// Runs `program` on one call as the kernel would, for tests: the action
    /// it returns, or nil for an instruction this small interpreter does not
    /// know (it covers what `build` emits and common hand-written filters).
    @_spi(Testing)
    public static func evaluate(_ program: [UInt64], number: Int32, arguments: [UInt64] = [],
                                architecture: UInt32 = auditArchX86_64) -> UInt32? {
        var data = [UInt32](repeating: 0, count: 16)  // struct seccomp_data as 32-bit words
        data[0] = UInt32(bitPattern: number)
        data[1] = architecture
        for (index, argument) in arguments.prefix(6).enumerated() {
            data[4 + 2 * index] = UInt32(truncatingIfNeeded: argument)
            data[5 + 2 * index] = UInt32(truncatingIfNeeded: argument >> 32)
        }
        var accumulator: UInt32 = 0
        var pc = 0
        while pc < program.count {
            let instruction = program[pc]
            let code = UInt16(truncatingIfNeeded: instruction)
            let jumpTrue = Int(UInt8(truncatingIfNeeded: instruction >> 16))
            let jumpFalse = Int(UInt8(truncatingIfNeeded: instruction >> 24))
            let k = UInt32(truncatingIfNeeded: instruction >> 32)
            pc += 1
            switch code {
            case 0x20:  // LD W ABS
                guard k % 4 == 0, k < 64 else { return nil }
                accumulator = data[Int(k / 4)]
            case 0x54: accumulator &= k  // ALU AND K
            case 0x05: pc += Int(k)  // JA
            case 0x15: pc += accumulator == k ? jumpTrue : jumpFalse
            case 0x25: pc += accumulator > k ? jumpTrue : jumpFalse
            case 0x35: pc += accumulator >= k ? jumpTrue : jumpFalse
            case 0x45: pc += accumulator & k != 0 ? jumpTrue : jumpFalse
            case 0x06: return k
            default: return nil
            }
        }
        return nil
    }
}
