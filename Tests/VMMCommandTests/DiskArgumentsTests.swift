import Testing
@testable import VMM
@testable import VMMCommand

@Suite("--disk and \"disks\"")
struct DiskArgumentsTests {
    func configuration(_ arguments: [String]) throws -> VMConfiguration {
        guard case let .run(configuration) = try VMMArguments.parse(arguments) else {
            throw VMMError.invalidConfiguration(field: "test", value: "", expected: "a run action")
        }
        return configuration
    }

    func message(_ arguments: [String]) -> String? {
        do {
            _ = try VMMArguments.parse(arguments)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("--disk is repeatable; ids default to disk0, disk1...; readonly, id and direct are read")
    func repeatable() throws {
        let result = try configuration(["--kernel", "k", "--disk", "path=/a.img", "--disk=path=/b.img,readonly=on,id=data",
                                        "--disk", "/c.img,direct=on,readonly=off"])
        #expect(result.disks == [
            DiskConfiguration(path: "/a.img", id: "disk0"),
            DiskConfiguration(path: "/b.img", id: "data", readOnly: true),
            DiskConfiguration(path: "/c.img", id: "disk2", directIO: true),
        ])
        #expect(try configuration(["--kernel", "k"]).disks.isEmpty)
    }

    @Test("bad --disk values name the key or value and what is valid", arguments: [
        (["--disk", "readonly=on"], "invalid disk 'readonly=on': expected path=PATH naming a raw or qcow2 image"),
        (["--disk", ""], "invalid disk '': expected KEY=VALUE items separated by commas, keys path, readonly, id, direct, format"),
        (["--disk", "path=/a,ro=on"], "invalid disk key 'ro': expected one of path, readonly, id, direct, format (in --disk path=/a,ro=on)"),
        (["--disk", "path=/a,readonly=maybe"], "invalid disk readonly 'maybe': expected on or off"),
        (["--disk", "path=/a,direct=1"], "invalid disk direct '1': expected on or off"),
        (["--disk", "path=/a,id=has space"], "invalid disk id 'has space': expected 1 to 20 letters, digits, '-', '_' or '.'"),
        (["--disk", "path=/a,id=abcdefghijklmnopqrstu"], "invalid disk id 'abcdefghijklmnopqrstu': expected 1 to 20 letters, digits, '-', '_' or '.'"),
        (["--disk", "path=/a,id="], "invalid disk id '': expected 1 to 20 letters, digits, '-', '_' or '.'"),
        (["--disk", "path=/a,id=x", "--disk", "path=/b,id=x"], "invalid disk id 'x': expected an id no other disk has (give each disk its own id=)"),
        (["--disk", "path=/a,id=disk1", "--disk", "path=/b"], "invalid disk id 'disk1': expected an id no other disk has (give each disk its own id=)"),
        (["--disk", "path=/a,,id=x"], "invalid disk 'path=/a,,id=x': expected KEY=VALUE items separated by commas, keys path, readonly, id, direct, format"),
        (["--disk"], "invalid option '--disk': expected a value after it"),
        (["--disk", "path=/a,format=vmdk"], "invalid disk format 'vmdk': expected raw or qcow2"),
    ])
    func badValues(arguments: [String], expected: String) {
        #expect(message(["--kernel", "k"] + arguments) == expected)
    }

    @Test("\"disks\" in the config file; --disk replaces them; bad entries are named")
    func configFile() throws {
        let text = #"{"kernel": "k", "disks": [{"path": "/a.img"}, {"path": "/b.img", "readonly": true, "id": "b", "direct": false}]}"#
        let parsed = try ConfigurationFile.parse(Array(text.utf8), path: "vm.json")
        #expect(parsed.disks == [DiskConfiguration(path: "/a.img", id: "disk0"), DiskConfiguration(path: "/b.img", id: "b", readOnly: true)])
        let cases: [(String, String)] = [
            (#"{"disks": {"path": "/a"}}"#, "invalid config key 'disks': expected an array of disk objects, not an object (in vm.json)"),
            (#"{"disks": ["/a"]}"#, "invalid config key 'disks[0]': expected an object, not a string (in vm.json)"),
            (#"{"disks": [{"readonly": true}]}"#, "invalid config key 'disks[0]': expected a \"path\" naming a raw or qcow2 image (in vm.json)"),
            (#"{"disks": [{"path": "/a", "readonly": "on"}]}"#, "invalid config key 'disks[0].readonly': expected true or false, not a string (in vm.json)"),
            (#"{"disks": [{"path": "/a", "size": 1}]}"#, "invalid config key 'disks[0].size': expected one of path, readonly, id, direct, format (in vm.json)"),
            (#"{"disks": [{"path": 3}]}"#, "invalid config key 'disks[0].path': expected a string, not a number (in vm.json)"),
        ]
        for (text, expected) in cases {
            do {
                _ = try ConfigurationFile.parse(Array(text.utf8), path: "vm.json")
                Issue.record("accepted \(text)")
            } catch {
                #expect("\(error)" == expected)
            }
        }
    }

    @Test("format=raw|qcow2 on --disk and \"format\" in the config file set the disk's format; absent, it is probed")
    func format() throws {
        let result = try configuration(["--kernel", "k", "--disk", "path=/a.qcow2,format=qcow2", "--disk", "path=/b.img,format=raw", "--disk", "/c"])
        #expect(result.disks.map(\.format) == [.qcow2, .raw, nil])
        let text = #"{"kernel": "k", "disks": [{"path": "/a.img", "format": "qcow2"}, {"path": "/b.img"}]}"#
        let parsed = try ConfigurationFile.parse(Array(text.utf8), path: "vm.json")
        #expect(parsed.disks?.map(\.format) == [.qcow2, nil])
        #expect(VMMArguments.help.contains("format=raw|qcow2"))
    }

    @Test("help describes --disk")
    func help() {
        #expect(VMMArguments.help.contains("--disk SPEC"))
        #expect(VMMArguments.help.contains("readonly=on|off"))
    }
}
