import FuzzSupport
import Glibc
import GuestMemory
import SnapshotFormat

// Snapshot state files are read from a path an API caller names: any bytes
// parse or fail with one SnapshotFileError, never crash or allocate by what
// a length claims. Each input is read three ways: as given (mostly stopped
// by the magic or the checksum); with magic, version, length and checksum
// made right, so mutations reach the section parser and the CPU check; and
// as a program for StateDecoder (each byte picks the next read).
//
// SWIFTLET_FUZZ_WRITE_SEED=path writes a valid state file there and exits:
// scripts/fuzz makes its seed that way, so no binary is committed.

let host = HostCPUIdentity.current

if let seedPath = getenv("SWIFTLET_FUZZ_WRITE_SEED").map({ String(cString: $0) }) {
    let memory = try? GuestMemory(ranges: [(GuestAddress(0), 0x10000), (GuestAddress(1 << 32), 0x2000)])
    let file = SnapshotFile(sections: [
        SnapshotSection(tag: GuestMemoryFileLayout.sectionTag) { encoder in memory?.fileLayout.encode(into: &encoder) },
        SnapshotSection(tag: SectionTag("VCPU")) { encoder in
            encoder.encode(UInt32(0))
            encoder.section(SectionTag("REGS")) { $0.encode(array: [UInt64](0..<18)) { $0.encode($1) } }
            encoder.section(SectionTag("MSRS")) { $0.encode(bytes: [UInt8](repeating: 0xA5, count: 40)) }
        },
        SnapshotSection(tag: SectionTag("VBLK")) { encoder in
            encoder.encode("rootfs")
            encoder.encode(true)
            encoder.encode(UInt16(256))
        },
    ])
    do {
        try file.write(to: seedPath)
        exit(0)
    } catch {
        let message = "fuzz: cannot write the seed: \(error)\n"
        // SAFETY: the C string lives for the duration of the write.
        _ = message.withCString { write(2, $0, strlen($0)) }
        exit(1)
    }
}

/// Decodes a state file; one that parses must encode back to the same bytes.
func checkFile(_ bytes: [UInt8]) {
    guard let file = try? SnapshotFile.decode(bytes, host: host) else { return }
    guard let again = try? file.encoded(), again == bytes else { fatalError("a parsed file does not encode back to its bytes") }
    for section in file.sections {
        var decoder = section.decoder()
        if section.tag == GuestMemoryFileLayout.sectionTag {
            _ = try? GuestMemoryFileLayout(decoding: &decoder)
        } else {
            walkSections(&decoder, depth: 0)
        }
    }
}

/// Reads a body as nested sections, as far as it goes.
func walkSections(_ decoder: inout StateDecoder, depth: Int) {
    while !decoder.isAtEnd, depth < 8 {
        guard var (_, body) = try? decoder.nextSection(maximumLength: 1 << 20) else { return }
        walkSections(&body, depth: depth + 1)
    }
}

/// The input with a valid header and checksum around its body.
func withValidFrame(_ bytes: [UInt8]) -> [UInt8] {
    var fixed = SnapshotFile.magic
    var encoder = StateEncoder()
    encoder.encode(SnapshotFile.currentVersion)
    encoder.encode(UInt64(bytes.count + 24))
    fixed += encoder.bytes
    fixed += bytes
    let checksum = CRC32C.checksum(of: fixed)
    for index in 0..<4 { fixed.append(UInt8(truncatingIfNeeded: checksum >> (8 * index))) }
    return fixed
}

/// Runs the input as reads: each byte picks a read and its limit.
func runDecoder(_ bytes: [UInt8]) {
    var decoder = StateDecoder(bytes)
    var depth = 0
    while let operation = try? decoder.decode(UInt8.self) {
        let limit = Int(operation >> 4) << 12
        let start = decoder.offset
        do {
            switch operation & 0xF {
            case 0: _ = try decoder.decode(UInt16.self)
            case 1: _ = try decoder.decode(UInt32.self)
            case 2: _ = try decoder.decode(UInt64.self)
            case 3: _ = try decoder.decodeBool()
            case 4:
                let bytes = try decoder.decodeBytes(maximumLength: limit)
                guard bytes.count <= limit else { fatalError("\(bytes.count) bytes over the limit of \(limit)") }
            case 5: _ = try decoder.decodeString(maximumLength: limit)
            case 6:
                let array = try decoder.decodeArray(maximumCount: .max, minimumElementSize: 4) { (decoder) throws(StateDecodingError) in
                    try decoder.decode(UInt32.self)
                }
                guard array.count * 4 <= bytes.count else { fatalError("\(array.count) elements from \(bytes.count) bytes") }
            case 7:
                var (_, body) = try decoder.nextSection(maximumLength: limit)
                walkSections(&body, depth: 0)
            case 8: try decoder.skipSection()
            case 9:
                let tag = try decoder.peekTag()
                _ = try decoder.section(tag) { (body) throws(StateDecodingError) in try body.decode(UInt32.self) }
            case 10: _ = try HostCPUIdentity(decoding: &decoder)
            case 11: _ = try GuestMemoryFileLayout(decoding: &decoder)
            case 12: try decoder.finish()
            default:
                depth += 1
                if depth > 64 { return }
            }
        } catch {
            // Failed reads consume nothing past the input; carry on from where the decoder is.
            guard decoder.offset >= start, decoder.offset <= bytes.count else { fatalError("offset \(decoder.offset) outside the input") }
        }
    }
}

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    checkFile(bytes)
    if bytes.count >= 24 {
        // The input's own body (past its header, before its checksum) in a valid frame.
        checkFile(withValidFrame(Array(bytes[20..<(bytes.count - 4)])))
    }
    runDecoder(bytes)
    return 0
}
