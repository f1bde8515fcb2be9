import Testing
@testable import VMM
@testable import VMMCommand
import VirtioNet

@Suite("--net and network_interfaces")
struct NetworkArgumentsTests {
    func interfaces(_ arguments: [String]) throws -> [NetworkInterfaceConfiguration] {
        guard case let .run(configuration) = try VMMArguments.parse(["--kernel", "k"] + arguments) else {
            throw VMMError.invalidConfiguration(field: "test", value: "", expected: "a run action")
        }
        return configuration.networkInterfaces
    }

    func message(_ arguments: [String]) -> String? {
        do {
            _ = try VMMArguments.parse(["--kernel", "k"] + arguments)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("--net is repeatable; ids default to net0, net1; MAC, tap-fd and offloads parse")
    func parses() throws {
        let result = try interfaces([
            "--net", "tap=tap0,mac=52:54:00:12:34:56", "--net=tap-fd=5,id=uplink,offloads=off", "--net", "id=third,tap=tap9",
        ])
        #expect(result.count == 3)
        #expect(result[0] == NetworkInterfaceConfiguration(id: "net0", tap: .name("tap0"), mac: try MACAddress(parsing: "52:54:00:12:34:56")))
        #expect(result[1] == NetworkInterfaceConfiguration(id: "uplink", tap: .descriptor(5), mac: nil, offloads: false))
        #expect(result[2].id == "third" && result[2].tap == .name("tap9"))
        // Without mac= the address is derived: stable, locally administered, unicast.
        #expect(result[1].effectiveMAC == result[1].effectiveMAC)
        #expect(result[1].effectiveMAC.isLocallyAdministered && !result[1].effectiveMAC.isMulticast)
        #expect(result[1].effectiveMAC != result[2].effectiveMAC)
        #expect(try interfaces([]).isEmpty)
    }

    @Test("each bad --net is refused naming the value and what is valid", arguments: [
        (["--net", "tap=tap0,mac=01:00:5e:00:00:01"], "network interface net0: invalid MAC address '01:00:5e:00:00:01': it is a multicast address"),
        (["--net", "tap=tap0,mac=52:54:00:12:34"], "network interface net0: invalid MAC address '52:54:00:12:34': expected six hex octets"),
        (["--net", "tap=tap0", "--net", "tap=tap1,id=net0"], "invalid net id 'net0': expected an id no other network interface has"),
        (["--net", "tap=tap0", "--net", "tap=tap0"], "invalid net 'tap=tap0': expected a tap no other network interface uses"),
        (["--net", "tap=tap0,mac=52:54:00:12:34:56", "--net", "tap=tap1,mac=52:54:00:12:34:56"], "invalid net mac '52:54:00:12:34:56': expected a MAC address no other"),
        (["--net", "tap=a-name-too-long-for-linux"], "network interface net0: invalid tap name 'a-name-too-long-for-linux': longer than 15 bytes"),
        (["--net", "tap=tap0,tap-fd=3"], "invalid net 'net0': expected tap=NAME or tap-fd=N, not both"),
        (["--net", "mac=52:54:00:12:34:56"], "invalid net 'net0': expected tap=NAME or tap-fd=N"),
        (["--net", "tap-fd=-1"], "invalid net tap-fd '-1': expected an open file descriptor number"),
        (["--net", "tap=tap0,speed=10G"], "invalid net 'speed': expected one of tap, tap-fd, mac, id, offloads"),
        (["--net", "tap0"], "invalid net 'tap0': expected key=value pairs"),
        (["--net", "tap=tap0,id=has space"], "invalid net id 'has space': expected 1 to 32 letters, digits"),
        (["--net", "tap=tap0,offloads=maybe"], "invalid net offloads 'maybe': expected on or off"),
        (["--net", "tap=tap0,tap=tap1"], "invalid net 'tap=tap0,tap=tap1': expected 'tap' at most once"),
    ])
    func refuses(arguments: [String], expected: String) {
        let text = message(arguments)
        #expect(text?.hasPrefix(expected) == true, "got: \(text ?? "accepted")")
    }

    @Test("network_interfaces in the config file: objects with tap or tap_fd; flags replace the file's list")
    func configFile() throws {
        let json = #"{"kernel": "k", "network_interfaces": [{"tap": "tap0", "mac": "52:54:00:00:00:01"}, {"tap_fd": 4, "id": "b", "offloads": false}]}"#
        let file = try ConfigurationFile.parse(Array(json.utf8), path: "vm.json")
        #expect(file.networkInterfaces == [
            NetworkInterfaceConfiguration(id: "net0", tap: .name("tap0"), mac: try MACAddress(parsing: "52:54:00:00:00:01")),
            NetworkInterfaceConfiguration(id: "b", tap: .descriptor(4), offloads: false),
        ])
        let bad: [(String, String)] = [
            (#"{"network_interfaces": {"tap": "tap0"}}"#, "invalid config key 'network_interfaces': expected an array of objects, not an object (in vm.json)"),
            (#"{"network_interfaces": ["tap0"]}"#, "invalid config key 'network_interfaces[0]': expected an object such as {\"tap\": \"tap0\"}, not a string (in vm.json)"),
            (#"{"network_interfaces": [{"tap": 1}]}"#, "invalid config key 'network_interfaces[0].tap': expected a string, not a number (in vm.json)"),
            (#"{"network_interfaces": [{"tap": "t", "bridge": "br0"}]}"#, "invalid config key 'network_interfaces[0].bridge': expected one of tap, tap_fd, mac, id, offloads (in vm.json)"),
            (#"{"network_interfaces": [{"tap": "t", "mac": "ff:ff:ff:ff:ff:ff"}]}"#, "network interface net0: invalid MAC address 'ff:ff:ff:ff:ff:ff': it is a multicast address"),
        ]
        for (text, expected) in bad {
            do {
                _ = try ConfigurationFile.parse(Array(text.utf8), path: "vm.json")
                Issue.record("accepted \(text)")
            } catch {
                #expect("\(error)".hasPrefix(expected), "got: \(error)")
            }
        }
    }

    @Test("A tap that cannot be opened is an error naming the interface and the reason")
    func tapOpenFails() {
        let interface = NetworkInterfaceConfiguration(id: "net0", tap: .descriptor(987_654))
        #expect(throws: VMMError.self) { try interface.makeDevice() }
        do {
            _ = try interface.makeDevice()
        } catch {
            #expect("\(error)".hasPrefix("network interface net0: tap-fd=987654 is not a usable tap: 987654 is not an open file descriptor"), "got: \(error)")
        }
    }
}

@Suite("--net queues= and mtu=")
struct NetworkQueueArgumentsTests {
    func interfaces(_ arguments: [String]) throws -> [NetworkInterfaceConfiguration] {
        guard case let .run(configuration) = try VMMArguments.parse(["--kernel", "k"] + arguments) else {
            throw VMMError.invalidConfiguration(field: "test", value: "", expected: "a run action")
        }
        return configuration.networkInterfaces
    }

    func message(_ arguments: [String]) -> String? {
        do {
            _ = try VMMArguments.parse(["--kernel", "k"] + arguments)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("queues defaults to 1 and mtu to none; queues=1, queues=16, mtu=68 and mtu=65535 parse")
    func parses() throws {
        let plain = try interfaces(["--net", "tap=tap0"])
        #expect(plain.first?.queues == 1 && plain.first?.mtu == nil, "\(plain)")
        #expect(plain.first == NetworkInterfaceConfiguration(id: "net0", tap: .name("tap0")), "\(plain)")
        let result = try interfaces(["--net", "tap=tap0,queues=4,mtu=9000", "--net", "tap=tap1,queues=16,mtu=68",
                                     "--net", "tap=tap2,queues=1,mtu=65535", "--net", "tap-fd=5,queues=1"])
        #expect(result.map(\.queues) == [4, 16, 1, 1], "\(result.map(\.queues))")
        #expect(result.map(\.mtu) == [9000, 68, 65535, nil], "\(result.map(\.mtu))")
    }

    @Test("bad queues= and mtu= values are refused naming the value and the valid range", arguments: [
        (["--net", "tap=tap0,queues=0"], "invalid net queues '0': expected a number of queue pairs from 1 to 16"),
        (["--net", "tap=tap0,queues=17"], "invalid net queues '17': expected a number of queue pairs from 1 to 16"),
        (["--net", "tap=tap0,queues=two"], "invalid net queues 'two': expected a number of queue pairs from 1 to 16"),
        (["--net", "tap=tap0,queues="], "invalid net queues '': expected a number of queue pairs from 1 to 16"),
        (["--net", "tap-fd=3,queues=2"], "invalid net queues '2': expected 1 with tap-fd="),
        (["--net", "tap=tap0,mtu=67"], "invalid net mtu '67': expected an MTU from 68 to 65535"),
        (["--net", "tap=tap0,mtu=65536"], "invalid net mtu '65536': expected an MTU from 68 to 65535"),
        (["--net", "tap=tap0,mtu=-1500"], "invalid net mtu '-1500': expected an MTU from 68 to 65535"),
        (["--net", "tap=tap0,queues=2,queues=2"], "invalid net 'tap=tap0,queues=2,queues=2': expected 'queues' at most once"),
    ])
    func refuses(arguments: [String], expected: String) {
        let text = message(arguments)
        #expect(text?.hasPrefix(expected) == true, "got: \(text ?? "accepted")")
    }
}
