import HostSystem

/// MMDS V2 session tokens. A token is self-contained, so the VMM keeps no
/// table a guest could fill: base64 of its expiry (monotonic milliseconds,
/// 8 bytes), 8 random bytes, and the first 16 bytes of HMAC-SHA-256 over
/// those 16 under a key drawn from getrandom when the service starts.
/// Anything else, a changed byte, or a passed expiry is refused.
public struct TokenAuthority: Sendable {
    public static let ttlRange: ClosedRange<UInt32> = 1...21_600
    /// Longer tokens are refused before decoding (ours are 44 characters).
    public static let maximumTokenLength = 70
    static let macLength = 16

    let key: [UInt8]

    public init(key: [UInt8]) {
        self.key = key
    }

    /// A key from the kernel's random number generator.
    public static func randomKey() -> [UInt8] {
        var key = [UInt8](repeating: 0, count: 32)
        var filled = 0
        while filled < key.count {
            // SAFETY: the slice stays inside `key` for the call.
            let count = key.withUnsafeMutableBytes { raw in
                (try? fillRandom(UnsafeMutableRawBufferPointer(rebasing: raw[filled...]))) ?? 0
            }
            if count <= 0 { break }
            filled += count
        }
        if filled < key.count {
            // getrandom cannot fail once the pool is up; never leave the key predictable.
            var generator = SystemRandomNumberGenerator()
            for index in filled..<key.count { key[index] = UInt8.random(in: 0...255, using: &generator) }
        }
        return key
    }

    /// A token valid until `now + ttl` seconds (`now` in monotonic ms).
    public func makeToken(ttlSeconds: UInt32, now: UInt64) -> String {
        let expiry = now &+ UInt64(ttlSeconds) * 1000
        var payload = Self.littleEndianBytes(expiry)
        payload += Self.littleEndianBytes(UInt64.random(in: 0...UInt64.max))
        let mac = HMACSHA256.authenticate(payload, key: key).prefix(Self.macLength)
        return Base64.encode(payload + mac)
    }

    /// Whether `token` came from this authority and has not expired at `now`.
    public func isValid(_ token: String, now: UInt64) -> Bool {
        guard token.utf8.count <= Self.maximumTokenLength, let bytes = Base64.decode(token), bytes.count == 16 + Self.macLength else {
            return false
        }
        let payload = Array(bytes[..<16])
        let expected = HMACSHA256.authenticate(payload, key: key).prefix(Self.macLength)
        // Compare every byte, so timing says nothing about where a forgery differs.
        var difference: UInt8 = 0
        for (a, b) in zip(expected, bytes[16...]) { difference |= a ^ b }
        guard difference == 0 else { return false }
        var expiry: UInt64 = 0
        for byte in payload[..<8].reversed() { expiry = expiry << 8 | UInt64(byte) }
        return expiry > now
    }

    static func littleEndianBytes(_ value: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
    }
}

/// SHA-256 (FIPS 180-4).
enum SHA256 {
    static let roundConstants: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    static func hash(_ message: [UInt8]) -> [UInt8] {
        var state: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
        var padded = message
        padded.append(0x80)
        while padded.count % 64 != 56 { padded.append(0) }
        let bitLength = UInt64(message.count) &* 8
        for shift in stride(from: 56, through: 0, by: -8) { padded.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }
        var schedule = [UInt32](repeating: 0, count: 64)
        for block in stride(from: 0, to: padded.count, by: 64) {
            for index in 0..<16 {
                let offset = block + index * 4
                schedule[index] = UInt32(padded[offset]) << 24 | UInt32(padded[offset + 1]) << 16
                    | UInt32(padded[offset + 2]) << 8 | UInt32(padded[offset + 3])
            }
            for index in 16..<64 {
                let s0 = rotate(schedule[index - 15], 7) ^ rotate(schedule[index - 15], 18) ^ (schedule[index - 15] >> 3)
                let s1 = rotate(schedule[index - 2], 17) ^ rotate(schedule[index - 2], 19) ^ (schedule[index - 2] >> 10)
                schedule[index] = schedule[index - 16] &+ s0 &+ schedule[index - 7] &+ s1
            }
            var (a, b, c, d, e, f, g, h) = (state[0], state[1], state[2], state[3], state[4], state[5], state[6], state[7])
            for index in 0..<64 {
                let sum1 = rotate(e, 6) ^ rotate(e, 11) ^ rotate(e, 25)
                let choice = (e & f) ^ (~e & g)
                let temp1 = h &+ sum1 &+ choice &+ roundConstants[index] &+ schedule[index]
                let sum0 = rotate(a, 2) ^ rotate(a, 13) ^ rotate(a, 22)
                let majority = (a & b) ^ (a & c) ^ (b & c)
                let temp2 = sum0 &+ majority
                (h, g, f, e, d, c, b, a) = (g, f, e, d &+ temp1, c, b, a, temp1 &+ temp2)
            }
            for (index, value) in [a, b, c, d, e, f, g, h].enumerated() { state[index] &+= value }
        }
        return state.flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> UInt32(24 - 8 * $0)) } }
    }

    @inline(__always)
    static func rotate(_ value: UInt32, _ count: UInt32) -> UInt32 {
        value >> count | value << (32 - count)
    }
}

/// HMAC (RFC 2104) over SHA-256.
enum HMACSHA256 {
    static func authenticate(_ message: [UInt8], key: [UInt8]) -> [UInt8] {
        var block = key.count > 64 ? SHA256.hash(key) : key
        block += [UInt8](repeating: 0, count: 64 - block.count)
        let inner = SHA256.hash(block.map { $0 ^ 0x36 } + message)
        return SHA256.hash(block.map { $0 ^ 0x5c } + inner)
    }
}

/// Standard base64 (RFC 4648 section 4) with padding.
enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var output: [UInt8] = []
        output.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let remaining = bytes.count - index
            let b0 = bytes[index], b1 = remaining > 1 ? bytes[index + 1] : 0, b2 = remaining > 2 ? bytes[index + 2] : 0
            output.append(alphabet[Int(b0 >> 2)])
            output.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            output.append(remaining > 1 ? alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            output.append(remaining > 2 ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// nil for anything but canonical padded base64.
    static func decode(_ text: String) -> [UInt8]? {
        let characters = Array(text.utf8)
        guard characters.count % 4 == 0 else { return nil }
        var output: [UInt8] = []
        var index = 0
        while index < characters.count {
            var values: [UInt8] = []
            var padding = 0
            for offset in 0..<4 {
                let character = characters[index + offset]
                if character == UInt8(ascii: "=") {
                    // Padding only at the end of the last group, at most two.
                    guard index + 4 == characters.count, offset >= 2 else { return nil }
                    padding += 1
                    values.append(0)
                } else {
                    guard padding == 0, let value = alphabet.firstIndex(of: character) else { return nil }
                    values.append(UInt8(value))
                }
            }
            output.append(values[0] << 2 | values[1] >> 4)
            if padding < 2 { output.append(values[1] << 4 | values[2] >> 2) }
            if padding < 1 { output.append(values[2] << 6 | values[3]) }
            index += 4
        }
        return output
    }
}
