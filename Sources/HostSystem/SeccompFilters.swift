import CKVM
import Glibc
import Synchronization

/// Why a `--seccomp-filter` file cannot be used.
public enum SeccompFilterError: Error, Equatable, Sendable, CustomStringConvertible {
    case tooLarge(Int)
    case truncated(at: Int)
    case trailingBytes(Int)
    case unknownThreadCategory(String)
    case missingThreadCategory(String)
    case invalidProgram(category: String, reason: String)

    public var description: String {
        switch self {
        case let .tooLarge(size): "the file has \(size) bytes; Firecracker's filters are at most \(SeccompFilters.maximumFileSize)"
        case let .truncated(offset): "the file ends early (at byte \(offset)); expected Firecracker's compiled layout (seccompiler-bin --basic or full, bincode)"
        case let .trailingBytes(count): "\(count) bytes follow the filters; expected Firecracker's compiled layout (bincode)"
        case let .unknownThreadCategory(name): "unknown thread category '\(name.prefix(40))'; expected exactly vmm, api and vcpu"
        case let .missingThreadCategory(name): "no filter for the '\(name)' threads; expected vmm, api and vcpu"
        case let .invalidProgram(category, reason): "the '\(category)' filter is not a valid seccomp program: \(reason)"
        }
    }
}

/// Seccomp-BPF filters per thread category, as Firecracker installs them:
/// `vmm` (the main thread and Swiftlet's device workers), `api` (the
/// control API thread) and `vcpu` (each vCPU thread). `HostThread`s install
/// their category's filter before running their body; the main thread
/// installs `vmm` once the vCPU threads have started.
///
/// The file format is what Firecracker's `seccompiler-bin` writes (Firecracker
/// 1.x up to 1.14: bincode with fixed-width little-endian integers): a u64
/// count of entries, then per entry a u64-length-prefixed UTF-8 category
/// name and a u64-counted array of 8-byte `sock_filter` instructions.
/// (Firecracker 1.15 and later write bitcode instead, which is not read.)
public enum SeccompFilters {
    public enum Category: String, CaseIterable, Sendable {
        case vmm, api, vcpu

        /// The category of a thread named `name` ("api", "vcpu0", anything else is vmm).
        public init(threadName name: String) {
            if name == "api" { self = .api } else if name.hasPrefix("vcpu") { self = .vcpu } else { self = .vmm }
        }
    }

    /// Firecracker's deserialization limit.
    public static let maximumFileSize = 100_000
    /// The kernel's limit on a seccomp program (BPF_MAXINSNS).
    public static let maximumInstructions = 4096

    /// The kinds of thread swiftlet-vmm starts, each with a filter of its
    /// own (Swiftlet's default filters). A thread's kind comes from its name.
    public enum ThreadKind: String, CaseIterable, Sendable {
        case main, vcpu, api
        case block = "blk", net = "virtio-net", rng = "virtio-rng", console = "virtio-console", vsock = "virtio-vsock"
        case serialOut = "serial-out"
        /// Starts the device workers (see ThreadLauncher).
        case launcher

        /// "api", "vcpu0", "blk-<drive>", "virtio-net" (or "virtio-net-q<N>",
        /// a multiqueue device's pair N), ..., "serial-out"; any other name is
        /// the main thread's kind.
        public init(threadName name: String) {
            if name == "api" { self = .api }
            else if name.hasPrefix("vcpu") { self = .vcpu }
            else if name.hasPrefix("blk-") { self = .block }
            else if name.hasPrefix("virtio-net-q") { self = .net }
            else if let kind = ThreadKind(rawValue: name), kind != .main { self = kind }
            else { self = .main }
        }

        /// The category of a Firecracker filter file that applies to these threads.
        public var fileCategory: Category {
            switch self {
            case .vcpu: .vcpu
            case .api: .api
            default: .vmm
            }
        }
    }

    static let installed = Mutex<[ThreadKind: [UInt64]]?>(nil)
    /// Whether the main thread's program allows everything the threads it
    /// starts need (Swiftlet's merged programs; not a Firecracker file's
    /// `vmm`), so that it can be installed before they start.
    static let mainProgramCoversChildren = Atomic<Bool>(false)
    /// `SWIFTLET_SECCOMP_SELF_TEST=<thread kind>`: that thread makes a
    /// forbidden call right after installing its filter (tests only; read
    /// from the environment at start, which neither the guest nor an API
    /// caller controls).
    static let selfTestKind = Mutex<ThreadKind?>(nil)
    /// The environment variable that asks for the self test.
    public static let selfTestVariable = "SWIFTLET_SECCOMP_SELF_TEST"

    /// Parses Firecracker's compiled filter file.
    public static func parse(_ bytes: [UInt8]) throws(SeccompFilterError) -> [Category: [UInt64]] {
        guard bytes.count <= maximumFileSize else { throw .tooLarge(bytes.count) }
        var offset = 0
        func u64() throws(SeccompFilterError) -> UInt64 {
            guard bytes.count - offset >= 8 else { throw .truncated(at: offset) }
            var value: UInt64 = 0
            for index in 0..<8 { value |= UInt64(bytes[offset + index]) << (8 * index) }
            offset += 8
            return value
        }
        var result: [Category: [UInt64]] = [:]
        let count = try u64()
        guard count <= 16 else { throw .unknownThreadCategory("(the file declares \(count) categories)") }
        for _ in 0..<count {
            let nameLength = try u64()
            guard nameLength <= 64, UInt64(bytes.count - offset) >= nameLength else { throw .truncated(at: offset) }
            let name = String(decoding: bytes[offset..<(offset + Int(nameLength))], as: UTF8.self).lowercased()
            offset += Int(nameLength)
            guard let category = Category(rawValue: name) else { throw .unknownThreadCategory(name) }
            let instructionCount = try u64()
            guard instructionCount <= UInt64(maximumInstructions) else {
                throw .invalidProgram(category: name, reason: "\(instructionCount) instructions; the kernel allows \(maximumInstructions)")
            }
            var program: [UInt64] = []
            program.reserveCapacity(Int(instructionCount))
            for _ in 0..<instructionCount { program.append(try u64()) }
            try validate(program, category: name)
            result[category] = program
        }
        guard offset == bytes.count else { throw .trailingBytes(bytes.count - offset) }
        for category in Category.allCases where result[category] == nil { throw .missingThreadCategory(category.rawValue) }
        return result
    }

    /// The checks the kernel's seccomp_check_filter makes, so that a bad
    /// program is refused at start with a message rather than when a thread
    /// installs it: known opcodes only, jumps inside the program, loads of
    /// seccomp_data aligned and in range, a return at the end.
    @_spi(Testing) public static func validate(_ program: [UInt64], category: String) throws(SeccompFilterError) {
        guard !program.isEmpty else { return }  // empty: no filter for these threads
        let dataSize: UInt32 = 64  // sizeof(struct seccomp_data)
        for (index, instruction) in program.enumerated() {
            let code = UInt16(truncatingIfNeeded: instruction)
            let jumpTrue = Int(UInt8(truncatingIfNeeded: instruction >> 16))
            let jumpFalse = Int(UInt8(truncatingIfNeeded: instruction >> 24))
            let k = UInt32(truncatingIfNeeded: instruction >> 32)
            let remaining = program.count - index - 1
            func fail(_ reason: String) -> SeccompFilterError { .invalidProgram(category: category, reason: "instruction \(index): \(reason)") }
            switch code {
            case 0x20:  // BPF_LD|BPF_W|BPF_ABS
                guard k & 3 == 0, k < dataSize else { throw fail("load outside seccomp_data (offset \(k))") }
            case 0x80, 0x81, 0x00, 0x01, 0x60, 0x61, 0x02, 0x03, 0x07, 0x87:
                // LD/LDX LEN, LD/LDX IMM, LD/LDX MEM, ST, STX, TAX, TXA
                if [0x60, 0x61, 0x02, 0x03].contains(code), k >= 16 { throw fail("scratch memory index \(k)") }
            case 0x04, 0x0c, 0x14, 0x1c, 0x24, 0x2c, 0x34, 0x3c, 0x44, 0x4c, 0x54, 0x5c, 0x64, 0x6c, 0x74, 0x7c, 0x84,
                 0x94, 0x9c, 0xa4, 0xac:
                // ALU with K or X; division or modulo by a constant 0 is refused, as by the kernel.
                if (code == 0x34 || code == 0x94) && k == 0 { throw fail("division by zero") }
            case 0x05:  // BPF_JMP|BPF_JA
                guard Int(k) < remaining else { throw fail("jump past the end") }
            case 0x15, 0x1d, 0x25, 0x2d, 0x35, 0x3d, 0x45, 0x4d:  // conditional jumps
                guard jumpTrue < remaining, jumpFalse < remaining else { throw fail("jump past the end") }
            case 0x06, 0x16:  // BPF_RET K / A
                break
            default:
                throw fail("opcode 0x\(String(code, radix: 16)) is not allowed in seccomp filters")
            }
        }
        let last = UInt16(truncatingIfNeeded: program[program.count - 1])
        guard last == 0x06 || last == 0x16 else {
            throw .invalidProgram(category: category, reason: "the last instruction is not a return")
        }
    }

    /// Sets the filters threads install from now on (once, before any guest
    /// runs) from a Firecracker file: each kind gets its category's program.
    public static func configure(_ filters: [Category: [UInt64]]) {
        configure(kinds: Dictionary(uniqueKeysWithValues: ThreadKind.allCases.map { ($0, filters[$0.fileCategory] ?? []) }),
                  mainProgramCoversChildren: false)
    }

    /// Sets one program per thread kind (Swiftlet's default filters, whose
    /// main program covers its children: `mainProgramCoversChildren`).
    public static func configure(kinds filters: [ThreadKind: [UInt64]], mainProgramCoversChildren covers: Bool) {
        mainProgramCoversChildren.store(covers, ordering: .relaxed)
        let selfTest = getenv(selfTestVariable).flatMap { ThreadKind(rawValue: String(cString: $0)) }
        selfTestKind.withLock { $0 = selfTest }
        installed.withLock { $0 = filters }
        // Without the launcher, workers start on vCPU threads and run under
        // the vCPU filter too (which then refuses their I/O): the launcher
        // failing to start ends the process, as a filter that cannot be installed does.
        do {
            try ThreadLauncher.startIfNeeded()
        } catch {
            let message = Array("swiftlet-vmm: cannot start the thread launcher: \(error)\n".utf8)
            _ = message.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
            _exit(1)
        }
    }

    /// Whether filters were configured.
    public static var isConfigured: Bool { installed.withLock { $0 != nil } }

    /// Installs `category`'s filter on the calling thread (nothing if none was
    /// configured or its program is empty). A thread keeps the filters of the
    /// thread that started it too: Linux stacks them.
    public static func installOnCurrentThread(_ kind: ThreadKind) throws(SystemCallError) {
        guard let program = installed.withLock({ $0?[kind] }), !program.isEmpty else { return }
        // SAFETY: the program's storage holds `count` 8-byte instructions for the duration of the call.
        let result = program.withUnsafeBytes { raw in
            ckvm_install_seccomp_filter(raw.baseAddress, UInt16(program.count))
        }
        guard result == 0 else { throw SystemCallError(call: "seccomp(SECCOMP_SET_MODE_FILTER) for the \(kind.rawValue) threads", errno: .current) }
        if selfTestKind.withLock({ $0 }) == kind {
            // No filter allows getppid: the kernel ends the process with SIGSYS here.
            _ = getppid()
        }
    }

    static let mainThreadInstalled = Atomic<Bool>(false)

    /// The main thread's filter before the vCPU threads start, when they may
    /// inherit it (Swiftlet's own filters), so that no guest code runs while
    /// the main thread is unfiltered; otherwise nothing.
    public static func installOnMainThreadBeforeVCPUs() {
        if mainProgramCoversChildren.load(ordering: .relaxed) { installOnMainThreadOnce() }
    }

    /// The main thread's filter, installed once however often the VM
    /// reboots (each installation would stack another copy).
    public static func installOnMainThreadOnce() {
        guard isConfigured, !mainThreadInstalled.exchange(true, ordering: .relaxed) else { return }
        installOrExit(.main)
    }

    /// For threads that cannot report an error: installs, or ends the process
    /// with one line (a thread must never run unfiltered when filters were asked for).
    public static func installOrExit(_ kind: ThreadKind) {
        do {
            try installOnCurrentThread(kind)
        } catch {
            let message = Array("swiftlet-vmm: cannot install the seccomp filter: \(error)\n".utf8)
            _ = message.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
            _exit(1)
        }
    }
}
