import Testing
@testable import ControlAPI

@Suite("HTTP request parser")
struct HTTPRequestParserTests {
    let parser = HTTPRequestParser(limits: .init(maximumHeaderBytes: 256, maximumBodyBytes: 64, maximumHeaderCount: 8))

    func parse(_ text: String) throws(HTTPParseError) -> HTTPRequestParser.Outcome {
        try parser.parse(Array(text.utf8)[...])
    }

    func request(_ text: String) throws -> (HTTPRequest, Int) {
        guard case let .request(request, consumed) = try parse(text) else {
            throw HTTPParseError(status: 0, message: "no complete request")
        }
        return (request, consumed)
    }

    func status(_ text: String) -> Int? {
        do {
            _ = try parse(text)
            return nil
        } catch {
            return error.status
        }
    }

    @Test("a GET with headers parses; names are lower-cased, values trimmed, the query split off")
    func simpleGet() throws {
        let text = "GET /machine-config?x=1 HTTP/1.1\r\nHost: localhost\r\nAccept:  application/json \r\n\r\n"
        let (request, consumed) = try request(text)
        #expect(request.method == "GET" && request.path == "/machine-config" && request.query == "x=1")
        #expect(request.header("accept") == "application/json" && request.header("host") == "localhost")
        #expect(request.keepAlive && request.body.isEmpty)
        #expect(consumed == text.utf8.count)
    }

    @Test("a body is read by Content-Length; pipelined bytes after it are left")
    func bodyAndPipelining() throws {
        let first = "PUT /vm HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        let (request, consumed) = try request(first + "GET / HTTP/1.1\r\n\r\n")
        #expect(request.body == Array("hello".utf8))
        #expect(consumed == first.utf8.count)
    }

    @Test("incomplete input asks for more; Expect: 100-continue is reported")
    func incomplete() throws {
        #expect(try parse("GET / HTTP/1.1\r\nHost: x\r\n") == .needHeaders)
        #expect(try parse("PUT /vm HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc") == .needBody(bodyLength: 10, expectsContinue: false))
        #expect(try parse("PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n") == .needBody(bodyLength: 10, expectsContinue: true))
    }

    @Test("keep-alive follows the version and the Connection header")
    func keepAlive() throws {
        #expect(try request("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").0.keepAlive == false)
        #expect(try request("GET / HTTP/1.0\r\n\r\n").0.keepAlive == false)
        #expect(try request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").0.keepAlive == true)
        #expect(try request("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n").0.keepAlive == false)
    }

    @Test("bare LF line ends and leading blank lines are tolerated")
    func lenient() throws {
        let (request, _) = try request("\r\nGET / HTTP/1.1\nHost: x\n\n")
        #expect(request.path == "/" && request.header("host") == "x")
    }

    @Test("oversized heads get 431, oversized bodies 413, before the body arrives")
    func limits() {
        #expect(status("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 300)) == 431)
        #expect(status("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 300) + "\r\n\r\n") == 431)
        #expect(status("GET / HTTP/1.1\r\n" + String(repeating: "A: b\r\n", count: 9) + "\r\n") == 431)
        #expect(status("PUT / HTTP/1.1\r\nContent-Length: 65\r\n\r\n") == 413)
        #expect(status("PUT / HTTP/1.1\r\nContent-Length: 64\r\n\r\n") == nil)
    }

    @Test("malformed requests are refused with the right status", arguments: [
        ("GARBAGE\r\n\r\n", 400),
        ("GET /\r\n\r\n", 400),
        ("GET  / HTTP/1.1\r\n\r\n", 400),
        ("GET machine-config HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\n\r\n", 505),
        ("GET / FTP/1.0\r\n\r\n", 400),
        ("G(T / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nA: b\u{01}c\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        ("PUT / HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
    ])
    func malformed(text: String, expected: Int) {
        #expect(status(text) == expected)
    }

    @Test("responses serialize with status line, length and Connection: close when asked")
    func responses() {
        let ok = String(decoding: HTTPResponse.json("{}").serialized(keepAlive: true), as: UTF8.self)
        #expect(ok == "HTTP/1.1 200 OK\r\nServer: swiftlet\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        let empty = String(decoding: HTTPResponse.noContent.serialized(keepAlive: false), as: UTF8.self)
        #expect(empty == "HTTP/1.1 204 No Content\r\nServer: swiftlet\r\nConnection: close\r\n\r\n")
        let fault = String(decoding: HTTPResponse.fault(400, "bad \"x\"").body, as: UTF8.self)
        #expect(fault == #"{"fault_message":"bad \"x\""}"#)
    }
}
