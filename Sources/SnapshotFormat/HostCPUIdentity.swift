import CKVM

/// One CPUID result register holding feature bits.
public struct CPUIDFeatureWord: Equatable, Hashable, Sendable, CustomStringConvertible {
    public enum Register: UInt8, Sendable, CaseIterable {
        case eax = 0, ebx, ecx, edx

        var name: String {
            switch self {
            case .eax: "EAX"
            case .ebx: "EBX"
            case .ecx: "ECX"
            case .edx: "EDX"
            }
        }
    }

    public var leaf: UInt32
    public var subleaf: UInt32
    public var register: Register
    public var value: UInt32

    public init(leaf: UInt32, subleaf: UInt32, register: Register, value: UInt32) {
        self.leaf = leaf
        self.subleaf = subleaf
        self.register = register
        self.value = value
    }

    /// "CPUID 0x7.0 EBX", the words' name in messages.
    public var description: String {
        "CPUID 0x\(String(leaf, radix: 16, uppercase: true)).\(subleaf) \(register.name)"
    }

    /// Same register of the same leaf (the value may differ).
    func isSameWord(as other: CPUIDFeatureWord) -> Bool {
        leaf == other.leaf && subleaf == other.subleaf && register == other.register
    }
}

/// The CPU a snapshot was taken on: enough to refuse restoring it where the
/// guest would find instructions or XSAVE state gone. A guest keeps the
/// CPUID it booted with, so a host lacking a feature bit it saw could fault
/// the guest on its next use of it (or lose register state KVM cannot load).
public struct HostCPUIdentity: Equatable, Sendable {
    /// "GenuineIntel", "AuthenticAMD"...
    public var vendor: String
    /// Display family, model and stepping (extended fields folded in).
    public var family: UInt32
    public var model: UInt32
    public var stepping: UInt32
    /// The feature words of `HostCPUIdentity.recordedWords`.
    public var features: [CPUIDFeatureWord]

    public init(vendor: String, family: UInt32, model: UInt32, stepping: UInt32, features: [CPUIDFeatureWord]) {
        self.vendor = vendor
        self.family = family
        self.model = model
        self.stepping = stepping
        self.features = features
    }

    /// The registers recorded: leaf 1 ECX/EDX, 7.0 EBX/ECX/EDX, XSAVE's
    /// 0xD.0 EAX/EDX (XCR0 components) and ECX (area size for all of
    /// them), 0xD.1 EAX (XSAVEOPT/XSAVEC/XSAVES...) and 0x80000001 ECX/EDX.
    public static let recordedWords: [(leaf: UInt32, subleaf: UInt32, register: CPUIDFeatureWord.Register)] = [
        (0x1, 0, .ecx), (0x1, 0, .edx),
        (0x7, 0, .ebx), (0x7, 0, .ecx), (0x7, 0, .edx),
        (0xD, 0, .eax), (0xD, 0, .ecx), (0xD, 0, .edx), (0xD, 1, .eax),
        (0x8000_0001, 0, .ecx), (0x8000_0001, 0, .edx),
    ]

    /// 0xD.0 ECX is a size, not bits: the host's XSAVE area must be at least as large.
    static func isSizeWord(_ word: CPUIDFeatureWord) -> Bool {
        word.leaf == 0xD && word.subleaf == 0 && word.register == .ecx
    }

    /// The CPU this process runs on, read with the `cpuid` instruction.
    /// Leaves above the CPU's highest read as zero.
    public static let current: HostCPUIdentity = {
        let leaf0 = hostCPUID(0, 0)
        let highestBasic = leaf0[0]
        let highestExtended = hostCPUID(0x8000_0000, 0)[0]
        var vendorBytes: [UInt8] = []
        // The vendor string is EBX, EDX, ECX in that order.
        for register in [leaf0[1], leaf0[3], leaf0[2]] {
            for index in 0..<4 { vendorBytes.append(UInt8(truncatingIfNeeded: register >> (8 * index))) }
        }
        let signature = highestBasic >= 1 ? hostCPUID(1, 0)[0] : 0
        let baseFamily = (signature >> 8) & 0xF
        let baseModel = (signature >> 4) & 0xF
        let family = baseFamily == 0xF ? baseFamily + ((signature >> 20) & 0xFF) : baseFamily
        let model = baseFamily == 0x6 || baseFamily == 0xF ? baseModel | ((signature >> 12) & 0xF0) : baseModel
        let features = recordedWords.map { word in
            let available = word.leaf >= 0x8000_0000 ? word.leaf <= highestExtended && highestExtended >= 0x8000_0000 : word.leaf <= highestBasic
            let registers = available ? hostCPUID(word.leaf, word.subleaf) : [0, 0, 0, 0]
            return CPUIDFeatureWord(leaf: word.leaf, subleaf: word.subleaf, register: word.register, value: registers[Int(word.register.rawValue)])
        }
        return HostCPUIdentity(
            vendor: String(decoding: vendorBytes, as: UTF8.self), family: family, model: model,
            stepping: signature & 0xF, features: features)
    }()

    private static func hostCPUID(_ leaf: UInt32, _ subleaf: UInt32) -> [UInt32] {
        var registers: [UInt32] = [0, 0, 0, 0]
        // SAFETY: the buffer holds the 4 registers ckvm_host_cpuid writes, alive for the call.
        registers.withUnsafeMutableBufferPointer { ckvm_host_cpuid(leaf, subleaf, $0.baseAddress) }
        return registers
    }

    /// The feature word `word` of this CPU; zero if not recorded.
    public func value(of word: CPUIDFeatureWord) -> UInt32 {
        features.first { $0.isSameWord(as: word) }?.value ?? 0
    }

    /// Why a snapshot taken on `self` cannot be restored on `host`, or nil
    /// if it can: a different vendor, or feature bits `host` lacks (bits the
    /// host has in addition are fine; family and model are not compared).
    public func incompatibility(onHost host: HostCPUIdentity) -> CPUMismatch? {
        if vendor != host.vendor { return .vendor(snapshot: vendor, host: host.vendor) }
        var missing: [MissingCPUFeature] = []
        for word in features {
            let hostValue = host.value(of: word)
            if Self.isSizeWord(word) {
                if hostValue < word.value { missing.append(.xsaveArea(snapshotSize: word.value, hostSize: hostValue)) }
                continue
            }
            let lacking = word.value & ~hostValue
            if lacking != 0 { missing.append(.bits(word: CPUIDFeatureWord(leaf: word.leaf, subleaf: word.subleaf, register: word.register, value: lacking))) }
        }
        return missing.isEmpty ? nil : .features(missing)
    }

    // Section layout: vendor string, family, model, stepping, then a counted
    // array of (leaf, subleaf, register, value).
    static let maximumVendorLength = 64
    static let maximumFeatureWords = 256

    public func encode(into encoder: inout StateEncoder) {
        encoder.encode(vendor)
        encoder.encode(family)
        encoder.encode(model)
        encoder.encode(stepping)
        encoder.encode(array: features) { encoder, word in
            encoder.encode(word.leaf)
            encoder.encode(word.subleaf)
            encoder.encode(word.register.rawValue)
            encoder.encode(word.value)
        }
    }

    public init(decoding decoder: inout StateDecoder) throws(StateDecodingError) {
        vendor = try decoder.decodeString(maximumLength: Self.maximumVendorLength)
        family = try decoder.decode()
        model = try decoder.decode()
        stepping = try decoder.decode()
        features = try decoder.decodeArray(maximumCount: Self.maximumFeatureWords, minimumElementSize: 13) { (decoder) throws(StateDecodingError) in
            let leaf: UInt32 = try decoder.decode()
            let subleaf: UInt32 = try decoder.decode()
            let registerOffset = decoder.offset
            guard let register = CPUIDFeatureWord.Register(rawValue: try decoder.decode()) else {
                throw .invalidValue(offset: registerOffset, what: "CPUID register")
            }
            return CPUIDFeatureWord(leaf: leaf, subleaf: subleaf, register: register, value: try decoder.decode())
        }
    }
}

/// What a host lacks that a snapshot's CPU had.
public enum MissingCPUFeature: Equatable, Sendable, CustomStringConvertible {
    /// These bits (the word's value) of a feature register.
    case bits(word: CPUIDFeatureWord)
    /// The XSAVE area for all supported components is smaller.
    case xsaveArea(snapshotSize: UInt32, hostSize: UInt32)

    public var description: String {
        switch self {
        case let .bits(word):
            let names = (0..<32).filter { word.value >> $0 & 1 == 1 }.map { bit in
                CPUFeatureNames.name(of: word, bit: bit).map { "\(bit) (\($0))" } ?? "\(bit)"
            }
            return "\(word) bit\(names.count == 1 ? "" : "s") \(names.joined(separator: ", "))"
        case let .xsaveArea(snapshotSize, hostSize):
            return "an XSAVE area of \(snapshotSize) bytes (this host's is \(hostSize))"
        }
    }
}

/// Why a snapshot's CPU and the host's differ.
public enum CPUMismatch: Equatable, Sendable, CustomStringConvertible {
    case vendor(snapshot: String, host: String)
    case features([MissingCPUFeature])

    public var description: String {
        switch self {
        case let .vendor(snapshot, host):
            "the snapshot was taken on a \(snapshot) CPU and this host's is \(host)"
        case let .features(missing):
            "the snapshot needs CPU features this host lacks: " + missing.map(\.description).joined(separator: "; ")
        }
    }
}

/// Names of the feature bits a guest is most likely to use, for messages;
/// the others are named by number.
enum CPUFeatureNames {
    static func name(of word: CPUIDFeatureWord, bit: Int) -> String? {
        switch (word.leaf, word.subleaf, word.register) {
        case (0x1, 0, .ecx):
            [0: "sse3", 1: "pclmulqdq", 9: "ssse3", 12: "fma", 13: "cx16", 19: "sse4_1", 20: "sse4_2",
             21: "x2apic", 22: "movbe", 23: "popcnt", 25: "aes", 26: "xsave", 28: "avx", 29: "f16c", 30: "rdrand"][bit]
        case (0x1, 0, .edx):
            [0: "fpu", 4: "tsc", 5: "msr", 8: "cx8", 15: "cmov", 23: "mmx", 24: "fxsr", 25: "sse", 26: "sse2"][bit]
        case (0x7, 0, .ebx):
            [0: "fsgsbase", 3: "bmi1", 5: "avx2", 7: "smep", 8: "bmi2", 9: "erms", 16: "avx512f", 17: "avx512dq",
             18: "rdseed", 19: "adx", 20: "smap", 28: "avx512cd", 29: "sha", 30: "avx512bw", 31: "avx512vl"][bit]
        case (0x7, 0, .ecx):
            [1: "avx512vbmi", 2: "umip", 3: "pku", 8: "gfni", 9: "vaes", 10: "vpclmulqdq", 11: "avx512vnni", 22: "rdpid"][bit]
        case (0x7, 0, .edx):
            [4: "fsrm", 8: "avx512_vp2intersect", 22: "amx_bf16", 24: "amx_tile", 25: "amx_int8"][bit]
        case (0xD, 0, .eax):
            [0: "x87 state", 1: "SSE state", 2: "AVX state", 5: "AVX-512 opmask", 6: "AVX-512 ZMM_Hi256",
             7: "AVX-512 Hi16_ZMM", 9: "PKRU state", 17: "AMX TILECFG", 18: "AMX TILEDATA"][bit]
        case (0xD, 1, .eax):
            [0: "xsaveopt", 1: "xsavec", 2: "xgetbv1", 3: "xsaves"][bit]
        case (0x8000_0001, 0, .ecx):
            [0: "lahf_lm", 5: "abm", 6: "sse4a", 8: "prefetchw"][bit]
        case (0x8000_0001, 0, .edx):
            [11: "syscall", 20: "nx", 26: "pdpe1gb", 27: "rdtscp", 29: "lm"][bit]
        default:
            nil
        }
    }
}
