import LeanJSON
import Synchronization
import Testing
@testable import MMDS

/// A clock the test moves (milliseconds).
final class TestClock: Sendable {
    let milliseconds = Atomic<UInt64>(1_000_000)
    func advance(seconds: UInt64) { milliseconds.add(seconds * 1000, ordering: .relaxed) }
    var function: @Sendable () -> UInt64 { { [self] in self.milliseconds.load(ordering: .relaxed) } }
}

@Suite("MMDS guest HTTP")
struct MetadataServiceTests {
    static let data = #"{"name": {"first": "John", "second": "Doe"}, "age": 43, "phones": {"home": {"RO": "+401234567", "UK": "+441234567"}, "mobile": "+442345678"}}"#

    static func service(_ version: MMDSVersion = .v1, imds: Bool = false, clock: TestClock = TestClock()) throws -> MetadataService {
        let service = MetadataService(clock: clock.function)
        try service.put(JSONParser.parse(data))
        service.configure(version: version, imdsCompatible: imds)
        return service
    }

    static func request(_ text: String) -> MetadataRequest? {
        guard case let .request(request, consumed) = MetadataRequestParser.parse(Array(text.utf8)[...]) else { return nil }
        #expect(consumed == text.utf8.count)
        return request
    }

    static func ask(_ service: MetadataService, _ text: String) throws -> MetadataResponse {
        let request = try #require(Self.request(text))
        return service.respond(to: request)
    }

    static func body(_ response: MetadataResponse) -> String { String(decoding: response.body, as: UTF8.self) }

    static func token(_ service: MetadataService, ttl: Int = 60) throws -> String {
        let response = try ask(service, "PUT http://169.254.169.254/latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: \(ttl)\r\n\r\n")
        #expect(response.status == 200)
        return body(response)
    }

    @Test("Requests parse in origin or absolute form; the query is dropped; headers keep their spelling")
    func parsing() throws {
        let request = try #require(Self.request("GET http://169.254.169.254/latest/meta-data?x=1 HTTP/1.1\r\nAccept: application/json\r\nX-Metadata-Token: abc\r\n\r\n"))
        #expect(request.method == "GET")
        #expect(request.path == "/latest/meta-data")
        #expect(request.minorVersion == 1)
        #expect(!request.closesConnection)
        #expect(request.header("x-metadata-token")?.value == "abc")
        #expect(request.header("x-metadata-token")?.name == "X-Metadata-Token")
        #expect(Self.request("GET / HTTP/1.0\n\n")?.closesConnection == true)
        #expect(Self.request("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")?.closesConnection == true)
        #expect(Self.request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")?.closesConnection == false)
        #expect(MetadataRequestParser.parse(Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8)[...]) == .incomplete)
    }

    @Test("Malformed requests get Firecracker's statuses: 400 bad line or URI, 501 unknown method or version, 400 and close for a body")
    func malformed() {
        func refused(_ text: String) -> MetadataResponse? {
            guard case let .invalid(response, _) = MetadataRequestParser.parse(Array(text.utf8)[...]) else { return nil }
            return response
        }
        #expect(refused("GARBAGE\r\n\r\n")?.status == 400)
        #expect(refused("BREW / HTTP/1.1\r\n\r\n").map(Self.body) == "Unsupported HTTP method.")
        #expect(refused("BREW / HTTP/1.1\r\n\r\n")?.status == 501)
        #expect(refused("GET / HTTP/2.0\r\n\r\n")?.status == 501)
        #expect(refused("GET ftp://x/ HTTP/1.1\r\n\r\n").map(Self.body) == "Invalid URI.")
        let withBody = refused("GET / HTTP/1.1\r\nContent-Length: 100\r\nAccept: application/json\r\n\r\nsome body")
        #expect(withBody.map(Self.body) == "Invalid request.")
        #expect(withBody?.closesConnection == true)
        #expect(refused("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")?.closesConnection == true)
        #expect(refused("GET / HTTP/1.1\r\nno colon here\r\n\r\n")?.status == 400)
        #expect(refused("GET /\u{e9} HTTP/1.1\r\n\r\n")?.status == 400)
    }

    @Test("Without Accept (or with text/plain or */*) answers are IMDS text; with application/json, JSON")
    func acceptHeader() throws {
        let service = try Self.service()
        for accept in ["", "Accept:\r\n", "Accept: */*\r\n", "Accept: text/plain\r\n"] {
            let response = try Self.ask(service, "GET http://169.254.169.254/ HTTP/1.0\r\n\(accept)\r\n")
            #expect(response.status == 200)
            #expect(response.contentType == "text/plain")
            #expect(Self.body(response) == "age\nname/\nphones/")
        }
        let response = try Self.ask(service, "GET / HTTP/1.1\r\nAccept: application/json\r\n\r\n")
        #expect(response.contentType == "application/json")
        #expect(Self.body(response) == #"{"age":43,"name":{"first":"John","second":"Doe"},"phones":{"home":{"RO":"+401234567","UK":"+441234567"},"mobile":"+442345678"}}"#)
        let serialized = String(decoding: response.serialized(minorVersion: 1), as: UTF8.self)
        #expect(serialized.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(serialized.contains("Content-Length: \(response.body.count)\r\n"))
    }

    @Test("imds_compat answers IMDS text whatever Accept says")
    func imdsCompatible() throws {
        let service = try Self.service(imds: true)
        let response = try Self.ask(service, "GET /name HTTP/1.1\r\nAccept: application/json\r\n\r\n")
        #expect(Self.body(response) == "first\nsecond")
        #expect(try Self.ask(service, "GET /age HTTP/1.1\r\nAccept: application/json\r\n\r\n").status == 501)
    }

    @Test("404 names the path, 501 for a number in IMDS, 400 for an empty path, 405 with Allow for other methods")
    func errors() throws {
        for version in MMDSVersion.allCases {
            let service = try Self.service(version)
            let token = try Self.token(service)
            let missing = try Self.ask(service, "GET http://169.254.169.254/invalid HTTP/1.0\r\nX-metadata-token: \(token)\r\n\r\n")
            #expect(missing.status == 404)
            #expect(Self.body(missing) == "Resource not found: /invalid.")
            let number = try Self.ask(service, "GET /age HTTP/1.1\r\nX-metadata-token: \(token)\r\n\r\n")
            #expect(number.status == 501)
            #expect(Self.body(number) == "Cannot retrieve value. The value has an unsupported type.")
            let empty = try Self.ask(service, "GET http:// HTTP/1.0\r\n\r\n")
            #expect(empty.status == 400)
            #expect(Self.body(empty) == "Invalid URI.")
            let patch = try Self.ask(service, "PATCH http://169.254.169.255/ HTTP/1.0\r\n\r\n")
            #expect(patch.status == 405)
            #expect(Self.body(patch) == "Not allowed HTTP method.")
            #expect(patch.extraHeaders == [.init(name: "Allow", value: "GET, PUT")])
            // A bad TTL header on a GET is ignored.
            let get = try Self.ask(service, "GET / HTTP/1.0\r\nX-metadata-token: \(token)\r\nX-metadata-token-ttl-seconds: application/json\r\n\r\n")
            #expect(get.status == 200)
        }
    }

    @Test("V1 serves GET with no token or a bad one, counting each; a valid token counts as neither")
    func version1() throws {
        let service = try Self.service(.v1)
        #expect(try Self.ask(service, "GET /name/first HTTP/1.1\r\n\r\n").status == 200)
        #expect(service.counters.noToken.load(ordering: .relaxed) == 1)
        #expect(try Self.ask(service, "GET /name/first HTTP/1.1\r\nX-metadata-token: INVALID_TOKEN\r\n\r\n").status == 200)
        #expect(service.counters.invalidToken.load(ordering: .relaxed) == 1)
        let token = try Self.token(service)
        #expect(try Self.ask(service, "GET /name/first HTTP/1.1\r\nX-aws-ec2-metadata-token: \(token)\r\n\r\n").status == 200)
        #expect(service.counters.noToken.load(ordering: .relaxed) == 1)
        #expect(service.counters.invalidToken.load(ordering: .relaxed) == 1)
    }

    @Test("V2 refuses GET without a token (401) and with an invalid or expired one (401); a fresh token works")
    func version2() throws {
        let clock = TestClock()
        let service = try Self.service(.v2, clock: clock)
        let none = try Self.ask(service, "GET / HTTP/1.0\r\n\r\n")
        #expect(none.status == 401)
        #expect(Self.body(none) == "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token.")
        let invalid = try Self.ask(service, "GET / HTTP/1.0\r\nX-metadata-token: foo\r\n\r\n")
        #expect(invalid.status == 401)
        #expect(Self.body(invalid) == "MMDS token not valid.")
        let token = try Self.token(service, ttl: 1)
        let good = try Self.ask(service, "GET /name/first HTTP/1.0\r\nX-metadata-token: \(token)\r\n\r\n")
        #expect(good.status == 200)
        #expect(Self.body(good) == "John")
        clock.advance(seconds: 1)
        #expect(try Self.ask(service, "GET /name/first HTTP/1.0\r\nX-metadata-token: \(token)\r\n\r\n").status == 401)
        #expect(service.counters.noToken.load(ordering: .relaxed) == 1)
        #expect(service.counters.invalidToken.load(ordering: .relaxed) == 2)
    }

    @Test("Token PUT: the TTL comes back in the header it was sent in; Firecracker's refusals for path, TTL and X-Forwarded-For")
    func tokenRequests() throws {
        for version in MMDSVersion.allCases {
            let service = try Self.service(version)
            let good = try Self.ask(service, "PUT http://169.254.169.254/latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
            #expect(good.status == 200)
            #expect(good.extraHeaders == [.init(name: "X-aws-ec2-metadata-token-ttl-seconds", value: "60")])
            for header in ["X-Forwarded-For", "x-forwarded-for", "X-fOrWaRdEd-FoR"] {
                let forwarded = try Self.ask(service, "PUT http://169.254.169.254/latest/api/token HTTP/1.0\r\n\(header): 203.0.113.195\r\n\r\n")
                #expect(forwarded.status == 400)
                #expect(Self.body(forwarded) == "Invalid header. Reason: Unsupported header name. Key: \(header)")
            }
            let path = try Self.ask(service, "PUT http://169.254.169.254/latest/api/toke HTTP/1.0\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n")
            #expect(path.status == 404)
            #expect(Self.body(path) == "Resource not found: /latest/api/toke.")
            let text = try Self.ask(service, "PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: application/json\r\n\r\n")
            #expect(text.status == 400)
            #expect(Self.body(text) == "Invalid header. Reason: Invalid value. Key:X-metadata-token-ttl-seconds; Value:application/json")
            for ttl in [0, 21_601] {
                let range = try Self.ask(service, "PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: \(ttl)\r\n\r\n")
                #expect(range.status == 400)
                #expect(Self.body(range) == "Invalid time to live value provided for token: \(ttl). Please provide a value between 1 and 21600.")
            }
            let noTTL = try Self.ask(service, "PUT /latest/api/token HTTP/1.0\r\n\r\n")
            #expect(noTTL.status == 400)
            #expect(Self.body(noTTL) == "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.")
        }
    }

    @Test("Requests and error answers are counted")
    func counting() throws {
        let service = try Self.service()
        _ = try Self.ask(service, "GET / HTTP/1.1\r\n\r\n")
        _ = try Self.ask(service, "GET /nope HTTP/1.1\r\n\r\n")
        #expect(service.counters.requests.load(ordering: .relaxed) == 2)
        #expect(service.counters.errors.load(ordering: .relaxed) == 1)
    }
}
