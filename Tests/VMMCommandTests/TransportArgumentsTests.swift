import ControlAPI
import Foundation
import Testing
@testable import VMM
@testable import VMMCommand

/// The virtio transport rule: --transport wins; else --enable-pci; else the
/// --config file's "transport"; else virtio-mmio when configured as
/// Firecracker is (--config-file, or --api-sock without --kernel/--config),
/// and PCI for the rest.
@Suite("swiftlet-vmm --transport and --enable-pci")
struct TransportArgumentsTests {
    func transport(_ arguments: [String]) throws -> VirtioTransportKind {
        switch try VMMArguments.parse(arguments) {
        case let .run(configuration): return configuration.transport
        case let .serve(mode): return mode.configuration.base.transport
        default: throw VMMError.invalidConfiguration(field: "test", value: "", expected: "a VM")
        }
    }

    static func firecrackerFile() throws -> URL {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-transport-\(getpid())-\(UUID().uuidString.prefix(8)).json")
        try Data(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#.utf8).write(to: file)
        return file
    }

    @Test("--kernel (and swiftlet run, and swiftletd, which pass it) default to PCI, with or without --api-sock")
    func kernelDefaultsToPCI() throws {
        #expect(try transport(["--kernel", "k"]) == .pci)
        #expect(try transport(["--kernel", "k", "--api-sock", "s", "--id", "vm"]) == .pci)
        #expect(try transport(["--kernel", "k", "--enable-pci"]) == .pci)
        #expect(try transport(["--kernel", "k", "--transport", "mmio"]) == .mmio)
        #expect(try transport(["--kernel", "k", "--transport=mmio", "--api-sock", "s"]) == .mmio)
    }

    @Test("Firecracker-style (--api-sock alone, --config-file) defaults to virtio-mmio; --enable-pci selects PCI")
    func firecrackerStyleDefaultsToMMIO() throws {
        #expect(try transport(["--api-sock", "s"]) == .mmio)
        #expect(try transport(["--api-sock", "s", "--enable-pci"]) == .pci)
        let file = try Self.firecrackerFile()
        defer { try? FileManager.default.removeItem(at: file) }
        #expect(try transport(["--config-file", file.path]) == .mmio)
        #expect(try transport(["--config-file", file.path, "--api-sock", "s"]) == .mmio)
        #expect(try transport(["--config-file", file.path, "--enable-pci"]) == .pci)
        // The instance the API later boots keeps it.
        guard case let .serve(mode) = try VMMArguments.parse(["--config-file", file.path]) else {
            Issue.record("--config-file is an API mode")
            return
        }
        #expect(try mode.configuration.vmConfiguration().transport == .mmio)
    }

    @Test("an explicit --transport wins over --enable-pci")
    func explicitWins() throws {
        #expect(try transport(["--api-sock", "s", "--enable-pci", "--transport", "mmio"]) == .mmio)
        #expect(try transport(["--api-sock", "s", "--transport", "pci"]) == .pci)
    }

    @Test("the --config JSON's \"transport\" key sets it; flags override it")
    func configKey() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftlet-transport-config-\(getpid()).json")
        try Data(#"{"kernel": "/k", "transport": "mmio"}"#.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        #expect(try transport(["--config", file.path]) == .mmio)
        #expect(try transport(["--config", file.path, "--enable-pci"]) == .pci)
        #expect(try transport(["--config", file.path, "--transport", "pci"]) == .pci)
        try Data(#"{"kernel": "/k", "transport": "usb"}"#.utf8).write(to: file)
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--config", file.path]) }
        try Data(#"{"kernel": "/k", "transport": 1}"#.utf8).write(to: file)
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--config", file.path]) }
    }

    @Test("a bad --transport names the value and what is valid; --enable-pci takes no value")
    func badValues() throws {
        do {
            _ = try VMMArguments.parse(["--kernel", "k", "--transport", "ccw"])
            Issue.record("accepted --transport ccw")
        } catch {
            #expect("\(error)" == "invalid transport 'ccw': expected pci or mmio")
        }
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--kernel", "k", "--enable-pci=yes"]) }
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--kernel", "k", "--enable-pci", "--enable-pci"]) }
    }

    @Test("--help teaches the transport options and the rule")
    func help() {
        #expect(VMMArguments.help.contains("--transport KIND"))
        #expect(VMMArguments.help.contains("--enable-pci"))
        #expect(VMMArguments.help.contains("mmio when configured as Firecracker is"))
    }
}
