import HostSystem
import Testing

/// Firecracker's compiled filter files (seccompiler-bin's bincode layout).
enum FilterFile {
    static func u64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

    /// A sock_filter as Firecracker stores it: code, jt, jf, k, little-endian.
    static func instruction(code: UInt16, jt: UInt8 = 0, jf: UInt8 = 0, k: UInt32) -> UInt64 {
        UInt64(code) | UInt64(jt) << 16 | UInt64(jf) << 24 | UInt64(k) << 32
    }

    static let allow = instruction(code: 0x06, k: 0x7fff_0000)  // BPF_RET | BPF_K, SECCOMP_RET_ALLOW

    static func bytes(_ filters: [(String, [UInt64])]) -> [UInt8] {
        var result = u64(UInt64(filters.count))
        for (name, program) in filters {
            result += u64(UInt64(name.utf8.count)) + Array(name.utf8) + u64(UInt64(program.count))
            for instruction in program { result += u64(instruction) }
        }
        return result
    }
}

@Suite("--seccomp-filter files")
struct SeccompFiltersTests {
    @Test("Firecracker's layout parses into the vmm, api and vcpu programs")
    func parses() throws {
        let load = FilterFile.instruction(code: 0x20, k: 0)  // BPF_LD|BPF_W|BPF_ABS, seccomp_data.nr
        let jump = FilterFile.instruction(code: 0x15, jt: 0, jf: 1, k: 60)
        let kill = FilterFile.instruction(code: 0x06, k: 0)
        let filters = try SeccompFilters.parse(FilterFile.bytes([
            ("vmm", [load, jump, kill, FilterFile.allow]), ("API", [FilterFile.allow]), ("vcpu", []),
        ]))
        #expect(filters[.vmm]?.count == 4 && filters[.api] == [FilterFile.allow] && filters[.vcpu] == [])
        #expect(SeccompFilters.Category(threadName: "vcpu3") == .vcpu && SeccompFilters.Category(threadName: "api") == .api)
        #expect(SeccompFilters.Category(threadName: "virtio-blk0") == .vmm)
        // A multiqueue virtio-net device's workers are net threads, each pair's named apart.
        #expect(SeccompFilters.ThreadKind(threadName: "virtio-net-q1") == .net && SeccompFilters.ThreadKind(threadName: "virtio-net") == .net)
    }

    @Test("malformed files are refused with what is wrong", arguments: [
        (FilterFile.bytes([("vmm", [FilterFile.allow]), ("api", [FilterFile.allow])]), "no filter for the 'vcpu' threads"),
        (FilterFile.bytes([("vmm", []), ("api", []), ("vcpu", []), ("gpu", [])]), "unknown thread category 'gpu'"),
        (Array(FilterFile.bytes([("vmm", []), ("api", []), ("vcpu", [FilterFile.allow])]).dropLast(3)), "ends early"),
        (FilterFile.bytes([("vmm", []), ("api", []), ("vcpu", [])]) + [0], "1 bytes follow"),
        (FilterFile.bytes([("vmm", [FilterFile.instruction(code: 0x20, k: 0)]), ("api", []), ("vcpu", [])]), "the last instruction is not a return"),
        (FilterFile.bytes([("vmm", [FilterFile.instruction(code: 0x15, jt: 9, k: 1), FilterFile.allow]), ("api", []), ("vcpu", [])]), "jump past the end"),
        (FilterFile.bytes([("vmm", [FilterFile.instruction(code: 0x20, k: 200), FilterFile.allow]), ("api", []), ("vcpu", [])]), "load outside seccomp_data"),
        (FilterFile.bytes([("vmm", [FilterFile.instruction(code: 0xC4, k: 0), FilterFile.allow]), ("api", []), ("vcpu", [])]), "not allowed"),
        ([UInt8](repeating: 0, count: 100_001), "at most 100000"),
        (Array("adassafvc".utf8), "declares"),
    ])
    func refused(bytes: [UInt8], message: String) {
        do {
            _ = try SeccompFilters.parse(bytes)
            Issue.record("accepted")
        } catch {
            #expect(error.description.contains(message), "\(error)")
        }
    }
}
