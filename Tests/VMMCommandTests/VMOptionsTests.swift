import Testing
@testable import VMM
@testable import VMMCommand

@Suite("Command-line and config parsing")
struct VMOptionsTests {
    func configuration(_ arguments: [String]) throws -> VMConfiguration {
        try VMOptions.parse(arguments).configuration()
    }

    @Test("defaults give one vCPU, 128 MiB and the serial console on stdio")
    func defaults() throws {
        let result = try configuration(["--kernel", "k"])
        #expect(result == VMConfiguration(kernelPath: "k"))
        #expect(result.cpuCount == 1 && result.memorySize == 128 << 20 && result.serial == .stdio)
    }

    @Test("memory sizes parse in the units users write")
    func memorySizes() {
        #expect(MemorySize.parse("512M") == 512 << 20)
        #expect(MemorySize.parse("2G") == 2 << 30)
        #expect(MemorySize.parse("2GiB") == 2 << 30)
        #expect(MemorySize.parse("1.5G") == 3 << 29)
        #expect(MemorySize.parse("256") == 256 << 20)
        #expect(MemorySize.parse("65536K") == 64 << 20)
        #expect(MemorySize.parse("lots") == nil)
        #expect(MemorySize.parse("") == nil)
        #expect(MemorySize.parse("99999999999999T") == nil)
        #expect(MemorySize.format(128 << 20) == "128 MiB")
    }

    @Test("each bad value is refused with its name and what is valid", arguments: [
        (["--kernel", "k", "--cpus", "0"], "invalid cpus '0': expected 1 to 254"),
        (["--kernel", "k", "--cpus", "999"], "invalid cpus '999': expected 1 to 254"),
        (["--kernel", "k", "--memory", "1M"], "invalid memory '1 MiB': expected 16 MiB to 1 TiB"),
        (["--kernel", "k", "--memory", "lots"], "invalid memory 'lots': expected a size such as 512M, 2G or 1024 (MiB)"),
        (["--kernel", "k", "--serial", "tty"], "invalid serial 'tty': expected stdio, file:PATH or none"),
        (["--kernel", "k", "--on-reboot", "maybe"], "invalid on-reboot 'maybe': expected restart or exit"),
        ([], "invalid kernel '(none)': expected --kernel PATH or \"kernel\" in --config"),
    ])
    func badValues(arguments: [String], message: String) {
        do {
            _ = try configuration(arguments)
            Issue.record("accepted \(arguments)")
        } catch {
            #expect("\(error)" == message)
        }
    }

    @Test("a config file supplies values and rejects unknown keys by name")
    func configFile() throws {
        let good = Array(#"{"kernel": "vmlinux", "cpus": 2, "memory": 256, "serial": "none", "on_reboot": "restart"}"#.utf8)
        let parsed = try ConfigurationFile.parse(good, path: "vm.json")
        #expect(parsed.kernel == "vmlinux" && parsed.cpus == 2 && parsed.memory == "256" && parsed.onReboot == "restart")
        let typo = Array(#"{"kernel": "vmlinux", "cpu": 2}"#.utf8)
        #expect {
            try ConfigurationFile.parse(typo, path: "vm.json")
        } throws: { error in
            "\(error)".contains("'cpu'") && "\(error)".contains("on_reboot")
        }
        #expect(throws: VMMError.self) { try ConfigurationFile.parse(Array("[1]".utf8), path: "vm.json") }
        #expect(throws: VMMError.self) { try ConfigurationFile.parse(Array(#"{"cpus": "two"}"#.utf8), path: "vm.json") }
    }

    @Test("console escape: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A, across reads")
    func escape() {
        var filter = ConsoleEscapeFilter()
        #expect(filter.filter([0x61, 0x01]) == ([0x61], false))
        #expect(filter.filter([0x01]) == ([0x01], false))
        #expect(filter.filter([0x01, 0x62]) == ([0x01, 0x62], false))
        #expect(filter.filter([0x63, 0x01, UInt8(ascii: "x"), 0x64]) == ([0x63], true))
    }

    @Test("RAM above 3 GiB moves above the 32-bit MMIO hole")
    func memoryPlan() {
        let small = MemoryPlan.ramRanges(memorySize: 128 << 20)
        #expect(small.count == 1 && small[0].size == 128 << 20)
        let large = MemoryPlan.ramRanges(memorySize: 5 << 30)
        #expect(large.count == 2)
        #expect(large[0].size == 3 << 30)
        #expect(large[1].start.rawValue == 4 << 30 && large[1].size == 2 << 30)
    }
}
