import Testing
@testable import VMM
@testable import VMMCommand

@Suite("swiftlet-vmm arguments and config file")
struct VMMArgumentsTests {
    func configuration(_ arguments: [String]) throws -> VMConfiguration {
        guard case let .run(configuration) = try VMMArguments.parse(arguments) else {
            throw VMMError.invalidConfiguration(field: "test", value: "", expected: "a run action")
        }
        return configuration
    }

    @Test("defaults give one vCPU, 128 MiB and the serial console on stdio")
    func defaults() throws {
        let result = try configuration(["--kernel", "k"])
        #expect(result == VMConfiguration(kernelPath: "k"))
        #expect(result.cpuCount == 1 && result.memorySize == 128 << 20 && result.serial == .stdio)
    }

    @Test("--name value and --name=value both work; help and version are actions")
    func forms() throws {
        let result = try configuration(["--kernel=k", "--cpus", "2", "--memory=1G", "--serial=file:/tmp/log", "--on-reboot", "restart", "--cmdline", "a b=c"])
        #expect(result.cpuCount == 2 && result.memorySize == 1 << 30 && result.serial == .file(path: "/tmp/log"))
        #expect(result.onReboot == .restart && result.commandLine == "a b=c")
        #expect(try VMMArguments.parse(["--kernel", "k", "--help"]) == .help)
        #expect(try VMMArguments.parse(["-h"]) == .help)
        #expect(try VMMArguments.parse(["--version"]) == .version)
    }

    @Test("--rng and \"rng\": true add the entropy device; --rng takes no value")
    func entropyDevice() throws {
        #expect(try configuration(["--kernel", "k"]).entropyDevice == false)
        #expect(try configuration(["--kernel", "k", "--rng"]).entropyDevice == true)
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--kernel", "k", "--rng=on"]) }
        #expect(throws: VMMError.self) { try VMMArguments.parse(["--kernel", "k", "--rng", "--rng"]) }
        let file = try ConfigurationFile.parse(Array(#"{"kernel": "k", "rng": true}"#.utf8), path: "vm.json")
        #expect(file.rng == true)
        #expect(throws: VMMError.self) { try ConfigurationFile.parse(Array(#"{"rng": "yes"}"#.utf8), path: "vm.json") }
        #expect(VMMArguments.help.contains("--rng"))
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

    @Test("each bad argument is refused with its name and what is valid", arguments: [
        (["--kernel", "k", "--cpus", "0"], "invalid cpus '0': expected 1 to 254"),
        (["--kernel", "k", "--cpus", "999"], "invalid cpus '999': expected 1 to 254"),
        (["--kernel", "k", "--cpus", "two"], "invalid cpus 'two': expected a whole number from 1 to 254"),
        (["--kernel", "k", "--memory", "1M"], "invalid memory '1 MiB': expected 16 MiB to 1 TiB"),
        (["--kernel", "k", "--memory", "lots"], "invalid memory 'lots': expected a size such as 512M, 2G or 1024 (MiB)"),
        (["--kernel", "k", "--serial", "tty"], "invalid serial 'tty': expected stdio, file:PATH or none"),
        (["--kernel", "k", "--on-reboot", "maybe"], "invalid on-reboot 'maybe': expected restart or exit"),
        (["--kernel", "k", "--cpu", "2"], "invalid option '--cpu': expected one of --kernel, --initrd, --cmdline, --cpus, --memory, --serial, --console, --disk, --on-reboot, --config, --kvm-device, --trace-exits, --api-sock, --id, --log-path, --level, --module, --metrics-path, --config-file, --seccomp-filter, --http-api-max-payload-size, --start-time-us, --start-time-cpu-us, --parent-cpu-time-us, --vsock, --net, --transport, --metadata, --mmds-size-limit, --rng, --no-api, --no-seccomp, --boot-timer, --show-level, --show-log-origin, --enable-pci"),
        (["--kernel"], "invalid option '--kernel': expected a value after it"),
        (["--kernel", "a", "--kernel", "b"], "invalid option '--kernel': expected at most once"),
        (["vmlinux"], "invalid argument 'vmlinux': expected an option such as --kernel PATH (see --help)"),
        (["--no-api"], "invalid option '--no-api': expected with --config-file (without the API nothing could configure the VM)"),
        (["--start-time-us", "soon"], "invalid start-time-us 'soon': expected a whole number from 0 to 18446744073709551615"),
        (["--level", "Loud"], "invalid level 'Loud': expected one of Error, Warning, Info, Debug, Trace, Off"),
    ])
    func badValues(arguments: [String], message: String) {
        #expect(throws: VMMError.self) { try VMMArguments.parse(arguments) }
        do {
            _ = try VMMArguments.parse(arguments)
        } catch {
            #expect("\(error)" == message)
        }
    }

    @Test("a config file supplies values; unknown keys and wrong types are named")
    func configFile() throws {
        let good = Array(#"{"kernel": "vmlinux", "cpus": 2, "memory": 256, "serial": "none", "on_reboot": "restart"}"#.utf8)
        let parsed = try ConfigurationFile.parse(good, path: "vm.json")
        #expect(parsed.kernel == "vmlinux" && parsed.cpus == 2 && parsed.memory == "256" && parsed.onReboot == "restart")
        let cases: [(String, String)] = [
            (#"{"kernel": "vmlinux", "cpu": 2}"#, "invalid config key 'cpu': expected one of kernel, initrd, cmdline, cpus, memory, serial, console, on_reboot, rng, disks, network_interfaces, transport, vsock (in vm.json)"),
            (#"{"cpus": "two"}"#, "invalid config key 'cpus': expected a whole number, not a string (in vm.json)"),
            (#"{"kernel": 7}"#, "invalid config key 'kernel': expected a string, not a number (in vm.json)"),
            ("[1]", "invalid config file 'vm.json': expected a JSON object, not an array"),
            (#"{"kernel": "a", "kernel": "b"}"#, "invalid config file 'vm.json': expected valid JSON (duplicate key \"kernel\" at byte 16)"),
            ("{", "invalid config file 'vm.json': expected valid JSON (expected a member name in quotes at byte 1)"),
        ]
        for (text, message) in cases {
            do {
                _ = try ConfigurationFile.parse(Array(text.utf8), path: "vm.json")
                Issue.record("accepted \(text)")
            } catch {
                #expect("\(error)" == message)
            }
        }
    }

    @Test("flags override the config file")
    func flagsOverrideConfig() throws {
        let values = ["kernel": "flag-kernel", "cpus": "3"]
        let result = try VMMArguments.configuration(from: values)
        #expect(result.kernelPath == "flag-kernel" && result.cpuCount == 3)
    }

    @Test("help lists every option and the exit statuses")
    func help() {
        for option in VMMArguments.options { #expect(VMMArguments.help.contains("--\(option.name) \(option.value)")) }
        #expect(VMMArguments.help.contains("EXIT STATUS") && VMMArguments.help.contains("EXAMPLE"))
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

@Suite("Console device option")
struct ConsoleOptionTests {
    @Test("--console picks serial or virtio and names the valid values otherwise")
    func consoleOption() throws {
        guard case let .run(configuration) = try VMMArguments.parse(["--kernel", "k", "--console", "virtio"]) else {
            Issue.record("expected a run action")
            return
        }
        #expect(configuration.console == .virtio)
        let error = #expect(throws: VMMError.self) { try VMMArguments.parse(["--kernel", "k", "--console", "hvc"]) }
        #expect(error?.description.contains("'hvc'") == true && error?.description.contains("serial or virtio") == true)
    }
}
