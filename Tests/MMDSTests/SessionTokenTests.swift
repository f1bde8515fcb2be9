import Testing
@testable import MMDS

@Suite("MMDS V2 session tokens")
struct SessionTokenTests {
    static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    @Test("SHA-256 matches the FIPS 180-4 examples")
    func sha256() {
        #expect(Self.hex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(Self.hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(Self.hex(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)))
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test("HMAC-SHA-256 matches RFC 4231 test cases 1, 2 and 6")
    func hmac() {
        #expect(Self.hex(HMACSHA256.authenticate(Array("Hi There".utf8), key: [UInt8](repeating: 0x0b, count: 20)))
            == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        #expect(Self.hex(HMACSHA256.authenticate(Array("what do ya want for nothing?".utf8), key: Array("Jefe".utf8)))
            == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(Self.hex(HMACSHA256.authenticate(Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
                                                 key: [UInt8](repeating: 0xaa, count: 131)))
            == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }

    @Test("base64 round-trips and refuses non-canonical text")
    func base64() {
        for length in 0..<10 {
            let bytes = (0..<length).map { UInt8($0 * 37 & 0xFF) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
        }
        #expect(Base64.encode(Array("foobar".utf8)) == "Zm9vYmFy")
        #expect(Base64.encode(Array("fo".utf8)) == "Zm8=")
        #expect(Base64.decode("Zm8") == nil)
        #expect(Base64.decode("Z=m8") == nil)
        #expect(Base64.decode("Zm8*") == nil)
    }

    @Test("A token is valid until its TTL passes, on the authority that made it only")
    func tokenLifetime() {
        let authority = TokenAuthority(key: [UInt8](repeating: 7, count: 32))
        let token = authority.makeToken(ttlSeconds: 60, now: 10_000)
        #expect(token.utf8.count == 44)
        #expect(authority.isValid(token, now: 10_000))
        #expect(authority.isValid(token, now: 69_999))
        #expect(!authority.isValid(token, now: 70_000))
        #expect(!TokenAuthority(key: [UInt8](repeating: 8, count: 32)).isValid(token, now: 10_000))
        // Two tokens with the same expiry differ (random nonce).
        #expect(authority.makeToken(ttlSeconds: 60, now: 10_000) != token)
    }

    @Test("Tampered, truncated, padded or overlong tokens are refused")
    func tokenTampering() {
        let authority = TokenAuthority(key: TokenAuthority.randomKey())
        let token = authority.makeToken(ttlSeconds: 21_600, now: 0)
        var bytes = Base64.decode(token) ?? []
        // Push the expiry far into the future: the MAC no longer matches.
        bytes[7] ^= 0x40
        #expect(!authority.isValid(Base64.encode(bytes), now: 0))
        #expect(!authority.isValid(String(token.dropLast(4)), now: 0))
        #expect(!authority.isValid(token + "AAAA", now: 0))
        #expect(!authority.isValid(String(repeating: "A", count: 200), now: 0))
        #expect(!authority.isValid("", now: 0))
        #expect(!authority.isValid("INVALID_TOKEN", now: 0))
    }
}
