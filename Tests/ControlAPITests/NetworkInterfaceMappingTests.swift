import Testing
import VirtioNet
@testable import ControlAPI
@testable import VMM

@Suite("Control API network interfaces become virtio-net devices")
struct NetworkInterfaceMappingTests {
    func configured(_ interfaces: [ControlAPI.NetworkInterfaceConfiguration]) throws -> InstanceConfiguration {
        var configuration = InstanceConfiguration(base: VMConfiguration(kernelPath: ""))
        configuration.bootSource = BootSource(kernelImagePath: "/k")
        for interface in interfaces { try configuration.putNetworkInterface(interface) }
        return configuration
    }

    @Test("iface_id, host_dev_name and guest_mac map onto VMConfiguration.networkInterfaces, in order")
    func maps() throws {
        let result = try configured([
            ControlAPI.NetworkInterfaceConfiguration(interfaceID: "eth0", hostDeviceName: "tap0", guestMAC: "06:00:ac:10:00:02"),
            ControlAPI.NetworkInterfaceConfiguration(interfaceID: "eth1", hostDeviceName: "tap1", mtu: 1500),
        ]).vmConfiguration()
        #expect(result.networkInterfaces == [
            VMM.NetworkInterfaceConfiguration(id: "eth0", tap: .name("tap0"), mac: try MACAddress(parsing: "06:00:ac:10:00:02")),
            VMM.NetworkInterfaceConfiguration(id: "eth1", tap: .name("tap1")),
        ])
    }

    @Test("an MTU other than 1500 and a multicast MAC are refused, naming the interface")
    func refuses() throws {
        let mtu = try configured([ControlAPI.NetworkInterfaceConfiguration(interfaceID: "eth0", hostDeviceName: "tap0", mtu: 9000)])
        do {
            _ = try mtu.vmConfiguration()
            Issue.record("mtu 9000 accepted")
        } catch {
            #expect("\(error)".contains("network interface 'eth0': mtu 9000 is not supported"), "got: \(error)")
        }
        let multicast = try configured([ControlAPI.NetworkInterfaceConfiguration(interfaceID: "eth0", hostDeviceName: "tap0", guestMAC: "01:00:5e:00:00:01")])
        do {
            _ = try multicast.vmConfiguration()
            Issue.record("multicast MAC accepted")
        } catch {
            #expect("\(error)".contains("network interface eth0: invalid MAC address '01:00:5e:00:00:01': it is a multicast address"), "got: \(error)")
        }
    }
}
