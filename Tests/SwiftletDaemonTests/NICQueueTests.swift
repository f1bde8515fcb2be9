import Foundation
import GRDB
import SwiftletClient
@testable import SwiftletDaemon
import Testing

/// A NIC's `queues` and `mtu`: decoding, validation, stored definitions from
/// before them, each driver's arguments and the taps the daemon makes.
@Suite("NIC queues and MTU")
struct NICQueueTests {
    static func decode(_ json: String) throws -> VMDefinition {
        try SwiftletJSON.decoder.decode(VMDefinition.self, from: Data(json.utf8))
    }

    static func definition(nic: String, hypervisor: String = "swiftlet") -> String {
        #"{"name":"w","hypervisor":"\#(hypervisor)","kernel":"/k","nics":[\#(nic)]}"#
    }

    /// The validator's refusal, or nil when the definition is accepted.
    static func refusal(_ json: String) throws -> DaemonError? {
        let decoded = try decode(json)
        do throws(DaemonError) { _ = try DefinitionValidator.validate(decoded) } catch { return error }
        return nil
    }

    @Test("queues and mtu decode and round-trip; absent they stay absent and mean one pair and no MTU")
    func decoding() throws {
        let nic = try #require(try Self.decode(Self.definition(nic: #"{"network":"default","queues":4,"mtu":9000}"#)).nics.first)
        #expect(nic.queues == 4 && nic.queuePairs == 4 && nic.mtu == 9000)
        let again = try SwiftletJSON.decoder.decode(VMDefinition.NIC.self, from: SwiftletJSON.encoder().encode(nic))
        #expect(again == nic)
        let plain = try #require(try Self.decode(Self.definition(nic: #"{"tap":"tap0"}"#)).nics.first)
        #expect(plain.queues == nil && plain.queuePairs == 1 && plain.mtu == nil)
        let encoded = String(decoding: try SwiftletJSON.encoder().encode(plain), as: UTF8.self)
        #expect(!encoded.contains("queues") && !encoded.contains("mtu"), "\(encoded)")
    }

    @Test("a wrong type or null is a decoding error naming the field; unknown NIC keys are still refused", arguments: [
        (#"{"tap":"tap0","queues":"4"}"#, "queues"),
        (#"{"tap":"tap0","queues":2.5}"#, "queues"),
        (#"{"tap":"tap0","queues":null}"#, "queues"),
        (#"{"tap":"tap0","queues":true}"#, "queues"),
        (#"{"tap":"tap0","mtu":"9000"}"#, "mtu"),
        (#"{"tap":"tap0","mtu":null}"#, "mtu"),
        (#"{"tap":"tap0","mtu":[9000]}"#, "mtu"),
        (#"{"tap":"tap0","queue":4}"#, "unknown field 'queue' in nic"),
        (#"{"tap":"tap0","driver":{"queues":4}}"#, "unknown field 'driver' in nic"),
    ])
    func wrongTypes(nic: String, mention: String) {
        #expect {
            _ = try Self.decode(Self.definition(nic: nic))
        } throws: { error in
            SwiftletJSON.describe(error).contains(mention)
        }
    }

    @Test("queues 1 to 16 and mtu 68 to 65535 are accepted under both drivers", arguments: [
        #"{"tap":"tap0","queues":1}"#, #"{"tap":"tap0","queues":16}"#, #"{"network":"default","queues":4,"mtu":9000}"#,
        #"{"tap":"tap0","mtu":68}"#, #"{"tap":"tap0","mtu":65535}"#, #"{"tap":"tap0","queues":2,"mtu":1500}"#,
    ])
    func inRange(nic: String) throws {
        #expect(try Self.refusal(Self.definition(nic: nic)) == nil)
        #expect(try Self.refusal(Self.definition(nic: nic, hypervisor: "qemu")) == nil)
    }

    @Test("out-of-range values at either end are a 400 naming the NIC, the value and the valid range", arguments: [
        (#"{"tap":"tap0","queues":0}"#, "invalid nics[1].queues 0: expected 1 to 16"),
        (#"{"tap":"tap0","queues":17}"#, "invalid nics[1].queues 17: expected 1 to 16"),
        (#"{"tap":"tap0","queues":-3}"#, "invalid nics[1].queues -3: expected 1 to 16"),
        (#"{"tap":"tap0","mtu":67}"#, "invalid nics[1].mtu 67: expected 68 to 65535"),
        (#"{"tap":"tap0","mtu":65536}"#, "invalid nics[1].mtu 65536: expected 68 to 65535"),
        (#"{"tap":"tap0","mtu":0}"#, "invalid nics[1].mtu 0: expected 68 to 65535"),
    ])
    func outOfRange(nic: String, message: String) throws {
        // The second NIC, so the index in the message is the NIC's own.
        let error = try Self.refusal(Self.definition(nic: #"{"tap":"tap9"},"# + nic))
        #expect(error?.status == 400)
        #expect(error?.description.hasPrefix(message) == true, "\(error?.description ?? "accepted")")
    }

    @Test("a definition stored before queues and mtu existed loads from the database unchanged")
    func oldDefinition() throws {
        let path = NSTemporaryDirectory() + "swiftlet-nicq-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        // As the daemon wrote it before this change (sorted keys, no queues or mtu).
        let json = #"{"autostart":false,"cmdline":"console=ttyS0","console":"log","cpus":1,"disks":[],"hypervisor":"swiftlet","kernel":"/k","memory_mib":128,"name":"web","nics":[{"mac":"52:54:00:12:34:56","network":"default"},{"id":"uplink","tap":"tap-web"}],"on_reboot":"restart","uuid":"4f3c0a4e-0d7e-4c41-9b8a-6d1f2e3a4b5c"}"#
        let store = try DefinitionStore(path: path)
        try store.database.write { db in
            try db.execute(sql: "INSERT INTO vm (name, uuid, definition, createdAt, updatedAt) VALUES ('web', '4f3c0a4e-0d7e-4c41-9b8a-6d1f2e3a4b5c', ?, 0, 0)",
                           arguments: [json])
        }
        let definition = try #require(try store.get("web")?.definition)
        #expect(definition.nics.map(\.queues) == [nil, nil] && definition.nics.map(\.mtu) == [nil, nil])
        #expect(definition.nics.map(\.queuePairs) == [1, 1])
        #expect(definition.nics[0].network == "default" && definition.nics[1].tap == "tap-web")
        #expect(try DefinitionValidator.validate(definition) == definition)
        // Stored again, it reads the same (nothing added for the defaults).
        try store.replace(definition)
        let stored = try store.database.read { db in try String.fetchOne(db, sql: "SELECT definition FROM vm WHERE name = 'web'") }
        #expect(stored == json)
    }

    static func swiftletArguments(_ nics: [VMDefinition.NIC]) throws -> [String] {
        let driver = SwiftletDriver(binary: "/usr/bin/swiftlet-vmm", hasControl: true, hasDiskFormats: true)
        return try driver.arguments(DriverTests.launch(VMDefinition(name: "web", kernel: "/k", nics: nics)))
    }

    @Test("swiftlet-vmm's --net: unchanged for queues 1 and no mtu; queues=N only above 1, mtu=M when set")
    func swiftletArguments() throws {
        #expect(DriverTests.values("--net", in: try Self.swiftletArguments([.init(tap: "tap0", mac: "52:54:00:00:00:01", id: "net0")]))
                == ["tap=tap0,mac=52:54:00:00:00:01,id=net0"])
        #expect(DriverTests.values("--net", in: try Self.swiftletArguments([.init(tap: "tap0", queues: 1)])) == ["tap=tap0"])
        #expect(DriverTests.values("--net", in: try Self.swiftletArguments([
            .init(tap: "swltap0", mac: "52:54:00:00:00:01", queues: 4, mtu: 9000), .init(tap: "tap1", mtu: 1400), .init(tap: "tap2", queues: 16),
        ])) == ["tap=swltap0,mac=52:54:00:00:00:01,queues=4,mtu=9000", "tap=tap1,mtu=1400", "tap=tap2,queues=16"])
    }

    static func qemuArguments(_ nics: [VMDefinition.NIC]) throws -> [String] {
        try QEMUDriver(binary: "/usr/bin/qemu-system-x86_64").arguments(
            DriverTests.launch(VMDefinition(name: "web", hypervisor: "qemu", kernel: "/k", nics: nics)))
    }

    @Test("QEMU: queues=N on -netdev tap and mq=on,vectors=2N+2 on virtio-net-pci above 1 pair; host_mtu=M when set; unchanged otherwise")
    func qemuArguments() throws {
        let single = try Self.qemuArguments([.init(tap: "swltap3", mac: "52:54:00:00:00:01", queues: 1)])
        #expect(DriverTests.values("-netdev", in: single) == ["tap,id=net0,ifname=swltap3,script=no,downscript=no"])
        #expect(DriverTests.values("-device", in: single) == ["virtio-net-pci,netdev=net0,disable-legacy=on,mac=52:54:00:00:00:01"])
        let multi = try Self.qemuArguments([.init(tap: "swltap3", mac: "52:54:00:00:00:01", queues: 4, mtu: 9000), .init(tap: "tap1", mtu: 1400)])
        #expect(DriverTests.values("-netdev", in: multi) == ["tap,id=net0,ifname=swltap3,script=no,downscript=no,queues=4",
                                                             "tap,id=net1,ifname=tap1,script=no,downscript=no"])
        #expect(DriverTests.values("-device", in: multi) == ["virtio-net-pci,netdev=net0,disable-legacy=on,mac=52:54:00:00:00:01,mq=on,vectors=10,host_mtu=9000",
                                                             "virtio-net-pci,netdev=net1,disable-legacy=on,host_mtu=1400"])
    }

    @Test("network taps: multi_queue for swiftlet-vmm always, for QEMU only when queues > 1; owned by the VMM's user")
    func tapCreation() {
        let single = VMDefinition.NIC(network: "default"), multi = VMDefinition.NIC(network: "default", queues: 2)
        let swiftlet = SwiftletDriver(binary: "/x", hasControl: true, hasDiskFormats: true), qemu = QEMUDriver(binary: "/y")
        #expect(NetworkManager.needsMultiQueueTap(single, driverDefault: swiftlet.multiQueueTaps))
        #expect(NetworkManager.needsMultiQueueTap(multi, driverDefault: swiftlet.multiQueueTaps))
        #expect(!NetworkManager.needsMultiQueueTap(single, driverDefault: qemu.multiQueueTaps))
        #expect(NetworkManager.needsMultiQueueTap(multi, driverDefault: qemu.multiQueueTaps))
        #expect(NetworkManager.tapAddArguments(name: "swltap0", multiQueue: true, owner: (uid: 64064, gid: 64065))
                == ["tuntap", "add", "dev", "swltap0", "mode", "tap", "vnet_hdr", "multi_queue", "user", "64064", "group", "64065"])
        #expect(NetworkManager.tapAddArguments(name: "swltap1", multiQueue: false, owner: nil)
                == ["tuntap", "add", "dev", "swltap1", "mode", "tap", "vnet_hdr"])
    }

    @Test("a user's tap for queues > 1 must be multi-queue or not exist yet; refused before the VMM starts, naming the tap and the fix")
    func userTapCheck() throws {
        // Flags as sysfs tun_flags shows them: 0x1902 with multi_queue, 0x5802 without.
        let flags: [String: Int] = ["mq": 0x1902, "single": 0x5802]
        let lookup: (String) -> Int? = { flags[$0] }
        func check(_ nics: [VMDefinition.NIC]) -> DaemonError? {
            do throws(DaemonError) {
                try NetworkManager.checkUserTaps(VMDefinition(name: "web", kernel: "/k", nics: nics), tapFlags: lookup)
            } catch { return error }
            return nil
        }
        #expect(check([.init(tap: "mq", queues: 4), .init(tap: "missing", queues: 4), .init(tap: "single"), .init(tap: "single", queues: 1)]) == nil)
        // Network NICs get their taps from the daemon, made to fit.
        #expect(check([.init(network: "single", queues: 4)]) == nil)
        let error = check([.init(tap: "mq"), .init(tap: "single", queues: 2)])
        #expect(error?.status == 400)
        #expect(error?.description.contains("nics[1] has queues 2 but tap 'single' is single-queue") == true, "\(error?.description ?? "accepted")")
        #expect(error?.description.contains("ip tuntap add dev single mode tap multi_queue") == true)
    }

    @Test("sysfs tun_flags parse as hex; anything else is no tap")
    func tapFlags() {
        #expect(HostNetwork.parseTapFlags("0x1902\n").map { $0 & HostNetwork.multiQueueTapFlag } == 0x100)
        #expect(HostNetwork.parseTapFlags("0x5802\n").map { $0 & HostNetwork.multiQueueTapFlag } == 0)
        #expect(HostNetwork.parseTapFlags("") == nil && HostNetwork.parseTapFlags("1902") == nil && HostNetwork.parseTapFlags("0xzz") == nil)
        #expect(HostNetwork.tapFlags("swlnone-nicq") == nil)
    }
}
