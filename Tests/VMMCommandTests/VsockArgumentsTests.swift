import Testing
@testable import VMM
@testable import VMMCommand

@Suite("--vsock and the vsock config sections")
struct VsockArgumentsTests {
    func configuration(_ arguments: [String]) throws -> VMConfiguration {
        guard case let .run(configuration) = try VMMArguments.parse(arguments) else {
            throw VMMError.invalidConfiguration(field: "test", value: "", expected: "a run action")
        }
        return configuration
    }

    @Test("--vsock cid=N,uds=PATH in either order; the path may hold commas when it comes last")
    func flag() throws {
        #expect(try configuration(["--kernel", "k"]).vsock == nil)
        #expect(try configuration(["--kernel", "k", "--vsock", "cid=3,uds=/run/v.sock"]).vsock == VsockConfiguration(guestCID: 3, udsPath: "/run/v.sock"))
        #expect(try configuration(["--kernel", "k", "--vsock=uds=/tmp/a,b,cid=7"]).vsock == VsockConfiguration(guestCID: 7, udsPath: "/tmp/a,b"))
        #expect(try configuration(["--kernel", "k", "--vsock", "cid=4294967294,uds=/tmp/x,y"]).vsock?.udsPath == "/tmp/x,y")
        #expect(VMMArguments.help.contains("--vsock SPEC"))
    }

    @Test("bad --vsock values name the problem and what is valid", arguments: [
        ("cid=2,uds=/tmp/v", "invalid vsock cid '2'"),
        ("cid=4294967295,uds=/tmp/v", "invalid vsock cid '4294967295'"),
        ("cid=x,uds=/tmp/v", "invalid vsock cid 'x'"),
        ("cid=3", "cid=N,uds=PATH"),
        ("uds=/tmp/v", "cid=N,uds=PATH"),
        ("cid=3,port=5,uds=/tmp/v", "cid=N,uds=PATH"),
        ("cid=3,uds=/" + String(repeating: "a", count: 120), "1 to 107 bytes"),
    ])
    func refused(text: String, message: String) {
        #expect {
            try VMMArguments.parse(["--kernel", "k", "--vsock", text])
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test("\"vsock\" in --config; --vsock overrides it")
    func configFile() throws {
        let file = try ConfigurationFile.parse(Array(#"{"kernel": "k", "vsock": {"guest_cid": 9, "uds_path": "/tmp/f.sock"}}"#.utf8), path: "vm.json")
        #expect(file.vsock == VsockConfiguration(guestCID: 9, udsPath: "/tmp/f.sock"))
        for bad in [#"{"vsock": 3}"#, #"{"vsock": {"guest_cid": 3}}"#, #"{"vsock": {"guest_cid": 1, "uds_path": "/x"}}"#,
                    #"{"vsock": {"guest_cid": 3, "uds_path": "/x", "port": 1}}"#] {
            #expect(throws: VMMError.self, "\(bad)") { try ConfigurationFile.parse(Array(bad.utf8), path: "vm.json") }
        }
    }

    @Test("with --api-sock and no kernel, --vsock presets the device; Firecracker's --config-file has a vsock section")
    func apiModes() throws {
        guard case let .serve(mode) = try VMMArguments.parse(["--api-sock", "/tmp/api.sock", "--vsock", "cid=5,uds=/tmp/v5"]) else {
            Issue.record("expected an API mode")
            return
        }
        #expect(mode.configuration.base.vsock == VsockConfiguration(guestCID: 5, udsPath: "/tmp/v5"))
    }
}
