import ControlAPI
import Foundation
import MMDS
import Testing
@testable import VMM
@testable import VMMCommand

@Suite("swiftlet-vmm --metadata and --mmds-size-limit")
struct MetadataArgumentsTests {
    func mode(_ arguments: [String]) throws -> VMMArguments.APIMode {
        guard case let .serve(mode) = try VMMArguments.parse(arguments) else {
            throw VMMError.invalidConfiguration(field: "test", value: "", expected: "an API mode")
        }
        return mode
    }

    func file(_ text: String, _ name: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-mmds-\(name)-\(getpid()).json")
        try Data(text.utf8).write(to: url)
        return url
    }

    func message(_ arguments: [String]) -> String {
        do {
            _ = try VMMArguments.parse(arguments)
            return ""
        } catch {
            return "\(error)"
        }
    }

    @Test("--metadata fills the data store before boot; the default size limit is Firecracker's 51200 bytes")
    func metadata() throws {
        let data = try file(#"{"latest": {"meta-data": {"ami-id": "ami-1"}}}"#, "data")
        defer { try? FileManager.default.removeItem(at: data) }
        let result = try mode(["--api-sock", "s", "--metadata", data.path])
        #expect(result.configuration.mmds.service.contents?.serialized == #"{"latest":{"meta-data":{"ami-id":"ami-1"}}}"#)
        #expect(result.configuration.mmds.created)
        #expect(result.configuration.mmds.service.sizeLimit == MetadataService.defaultSizeLimit)
        #expect(VMMArguments.help.contains("--metadata FILE"))
        #expect(VMMArguments.help.contains("--mmds-size-limit BYTES"))
    }

    @Test("--mmds-size-limit bounds --metadata and later PUTs; bad values and files are one clear line")
    func sizeLimit() throws {
        let data = try file(#"{"key": "\#(String(repeating: "x", count: 100))"}"#, "limit")
        defer { try? FileManager.default.removeItem(at: data) }
        #expect(try mode(["--api-sock", "s", "--mmds-size-limit", "4096"]).configuration.mmds.service.sizeLimit == 4096)
        #expect(message(["--api-sock", "s", "--mmds-size-limit", "64", "--metadata", data.path])
            == "invalid metadata '\(data.path)': expected at most 64 bytes of JSON (raise --mmds-size-limit)")
        #expect(message(["--api-sock", "s", "--mmds-size-limit", "0"]) == "invalid mmds-size-limit '0': expected a number of bytes, 1 or more")
        #expect(message(["--api-sock", "s", "--metadata", "/no/such/metadata.json"]) == "metadata file '/no/such/metadata.json' does not exist")
        let broken = try file("{not json", "broken")
        defer { try? FileManager.default.removeItem(at: broken) }
        #expect(message(["--api-sock", "s", "--metadata", broken.path]).hasPrefix("invalid metadata '\(broken.path)': expected a JSON document ("))
    }

    @Test("--config-file with mmds-config and --metadata: MMDS on the file's interface with the file's data")
    func configFile() throws {
        let config = try file(#"{"boot-source": {"kernel_image_path": "/k"}, "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}], "mmds-config": {"network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2"}}"#, "config")
        let data = try file(#"{"a": "b"}"#, "config-data")
        defer {
            try? FileManager.default.removeItem(at: config)
            try? FileManager.default.removeItem(at: data)
        }
        let result = try mode(["--config-file", config.path, "--metadata", data.path, "--serial", "none"])
        let built = try result.configuration.vmConfiguration()
        #expect(built.metadataService?.interfaceIDs == ["eth0"])
        #expect(built.metadataService?.address.description == "169.254.170.2")
        #expect(built.metadataService?.service.contents?.serialized == #"{"a":"b"}"#)
    }
}
