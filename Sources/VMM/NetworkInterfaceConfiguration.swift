import RateLimiter
import Synchronization
import VirtioNet

/// One virtio-net interface: the tap it sits on, its id and MAC address.
public struct NetworkInterfaceConfiguration: Equatable, Sendable {
    /// Where the frames go on the host.
    public enum Tap: Hashable, Sendable, CustomStringConvertible {
        /// A tap interface by name, created if missing (needs CAP_NET_ADMIN).
        case name(String)
        /// An already-open tap descriptor inherited from the caller.
        case descriptor(Int32)

        public var description: String {
            switch self {
            case let .name(name): "tap=\(name)"
            case let .descriptor(descriptor): "tap-fd=\(descriptor)"
            }
        }
    }

    public var id: String
    public var tap: Tap
    /// nil: a stable locally administered address derived from id and tap.
    public var mac: MACAddress?
    /// Offer checksum and TSO offloads to the guest (default on).
    public var offloads = true
    /// Limits on what the guest receives and sends (Firecracker's
    /// rx_rate_limiter and tx_rate_limiter).
    public var receiveRateLimiter = RateLimiterConfiguration.unlimited
    public var transmitRateLimiter = RateLimiterConfiguration.unlimited
    /// Queue pairs (1...16): more than one offers VIRTIO_NET_F_MQ with one
    /// tap queue (IFF_MULTI_QUEUE) and one worker thread per pair.
    public var queues = 1
    /// Offered to the guest with VIRTIO_NET_F_MTU (68...65535); nil offers none.
    public var mtu: UInt16?

    /// The valid `queues=` values.
    public static let queueRange = 1...VirtioNetDevice.maximumQueuePairs

    public init(id: String, tap: Tap, mac: MACAddress? = nil, offloads: Bool = true, queues: Int = 1, mtu: UInt16? = nil) {
        self.id = id
        self.tap = tap
        self.mac = mac
        self.offloads = offloads
        self.queues = queues
        self.mtu = mtu
    }

    /// The MAC the guest sees.
    public var effectiveMAC: MACAddress { mac ?? .derived(from: "\(id)/\(tap)") }

    /// What `--net` takes, for help and error messages.
    public static let syntax = "tap=NAME or tap-fd=N, then optionally ,mac=52:54:00:12:34:56 ,id=ID ,offloads=on|off ,queues=1-16 (tap= only) ,mtu=68-65535"

    /// Parses `tap=NAME[,mac=MAC][,id=ID][,offloads=on|off][,queues=N][,mtu=N]` or
    /// `tap-fd=N[,...]`; `defaultID` names the interface when `id` is absent.
    public static func parse(_ text: String, defaultID: String) throws(VMMError) -> NetworkInterfaceConfiguration {
        var fields: [String: String] = [:]
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let equals = part.firstIndex(of: "="), equals != part.startIndex else {
                throw .invalidConfiguration(field: "net", value: text, expected: "key=value pairs: \(syntax)")
            }
            let key = String(part[..<equals]), value = String(part[part.index(after: equals)...])
            guard ["tap", "tap-fd", "mac", "id", "offloads", "queues", "mtu"].contains(key) else {
                throw .invalidConfiguration(field: "net", value: key, expected: "one of tap, tap-fd, mac, id, offloads, queues, mtu (\(syntax))")
            }
            guard fields[key] == nil else {
                throw .invalidConfiguration(field: "net", value: text, expected: "'\(key)' at most once")
            }
            fields[key] = value
        }
        var offloads = true
        if let value = fields["offloads"] {
            switch value {
            case "on", "true", "yes": offloads = true
            case "off", "false", "no": offloads = false
            default: throw .invalidConfiguration(field: "net offloads", value: value, expected: "on or off")
            }
        }
        try validateCommandLine(id: fields["id"] ?? defaultID)
        var queues = 1
        if let value = fields["queues"] {
            guard let count = Int(value), queueRange.contains(count) else {
                throw .invalidConfiguration(field: "net queues", value: value,
                                            expected: "a number of queue pairs from \(queueRange.lowerBound) to \(queueRange.upperBound)")
            }
            guard fields["tap-fd"] == nil || count == 1 else {
                throw .invalidConfiguration(field: "net queues", value: value,
                                            expected: "1 with tap-fd= (one descriptor is one tap queue; use tap=NAME for several)")
            }
            queues = count
        }
        var mtu: UInt16?
        if let value = fields["mtu"] {
            guard let number = Int(value), VirtioNetDevice.mtuRange.contains(number) else {
                throw .invalidConfiguration(field: "net mtu", value: value,
                                            expected: "an MTU from \(VirtioNetDevice.mtuRange.lowerBound) to \(VirtioNetDevice.mtuRange.upperBound)")
            }
            mtu = UInt16(clamping: number)
        }
        var interface = try make(id: fields["id"] ?? defaultID, tapName: fields["tap"], tapDescriptor: fields["tap-fd"],
                                 mac: fields["mac"], offloads: offloads)
        interface.queues = queues
        interface.mtu = mtu
        return interface
    }

    /// Builds one from its parts (the `--net` fields or a config-file object),
    /// checking each.
    public static func make(id: String, tapName: String?, tapDescriptor: String?, mac: String?, offloads: Bool = true) throws(VMMError) -> NetworkInterfaceConfiguration {
        try validate(id: id)
        let tap: Tap
        switch (tapName, tapDescriptor) {
        case let (name?, nil):
            do {
                try VirtioNet.Tap.validate(name: name)
            } catch {
                throw .network(id: id, cause: error)
            }
            tap = .name(name)
        case let (nil, text?):
            guard let descriptor = Int32(text), descriptor >= 0 else {
                throw .invalidConfiguration(field: "net tap-fd", value: text, expected: "an open file descriptor number (0 or more)")
            }
            tap = .descriptor(descriptor)
        case (nil, nil):
            throw .invalidConfiguration(field: "net", value: id, expected: "tap=NAME or tap-fd=N")
        case (_?, _?):
            throw .invalidConfiguration(field: "net", value: id, expected: "tap=NAME or tap-fd=N, not both")
        }
        var address: MACAddress?
        if let mac {
            do {
                address = try MACAddress(parsing: mac)
            } catch {
                throw .network(id: id, cause: error)
            }
        }
        return NetworkInterfaceConfiguration(id: id, tap: tap, mac: address, offloads: offloads)
    }

    /// `--net id=`: 1 to 32 letters, digits, '-', '_' or '.' (names that read
    /// well in messages and the command line).
    static func validateCommandLine(id: String) throws(VMMError) {
        guard (1...32).contains(id.utf8.count),
              id.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E }) else {
            throw .invalidConfiguration(field: "net id", value: id, expected: "1 to 32 letters, digits, '-', '_' or '.'")
        }
    }

    /// Ids name devices in messages and the control API: any non-empty text
    /// without control characters (Firecracker's iface_id has no length limit).
    static func validate(id: String) throws(VMMError) {
        guard !id.isEmpty, !id.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw .invalidConfiguration(field: "net id", value: id, expected: "a non-empty name without control characters")
        }
    }

    /// Checks a VM's interfaces together: ids, taps and MACs must differ.
    static func validate(_ interfaces: [NetworkInterfaceConfiguration]) throws(VMMError) {
        var ids = Set<String>(), taps = Set<String>(), macs = Set<MACAddress>()
        for interface in interfaces {
            guard ids.insert(interface.id).inserted else {
                throw .invalidConfiguration(field: "net id", value: interface.id, expected: "an id no other network interface has")
            }
            guard taps.insert(interface.tap.description).inserted else {
                throw .invalidConfiguration(field: "net", value: interface.tap.description, expected: "a tap no other network interface uses")
            }
            guard macs.insert(interface.effectiveMAC).inserted else {
                throw .invalidConfiguration(field: "net mac", value: interface.effectiveMAC.description, expected: "a MAC address no other network interface has")
            }
        }
    }

    /// Opens the tap and builds the device; called while the VM is built,
    /// so a tap that cannot be opened stops the VMM before the guest starts.
    /// With `metadata` listing this interface, MMDS sits in front of the tap.
    public func makeDevice(metadata: MetadataServiceAttachment? = nil) throws(VMMError) -> VirtioNetDevice {
        let backends: [VirtioNet.Tap]
        do {
            backends = try OpenTaps.taps(tap, queues: queues)
        } catch {
            throw .network(id: id, cause: error)
        }
        guard let first = backends.first else {
            throw .invalidConfiguration(field: "net queues", value: "\(queues)", expected: "at least one tap queue")
        }
        if backends.count > 1, metadata?.interfaceIDs.contains(id) == true {
            // MMDS answers on one tap queue; frames on the others would pass it by.
            throw .invalidConfiguration(field: "net queues", value: "\(queues)", expected: "1 on an interface MMDS uses (\(id))")
        }
        let tap = try metadata?.backend(for: id, tap: first) ?? first
        return VirtioNetDevice(tap: tap, mac: effectiveMAC, offloads: offloads,
                               receiveRateLimiter: receiveRateLimiter, transmitRateLimiter: transmitRateLimiter,
                               additionalQueues: Array(backends.dropFirst()), mtu: mtu)
    }
}

/// Taps stay open for the life of the process, and a VM rebuilt on reboot
/// (or by the control API) gets the same one: a tap without
/// IFF_MULTI_QUEUE takes one attachment, so reopening it while the previous
/// VM's device still holds it would fail with EBUSY. The previous device was
/// reset at shutdown, so it no longer touches the tap.
///
/// A multi-queue device keeps all its tap queues here; asked for another
/// number of queues than are open, the open ones are closed and the tap
/// attached afresh (their device was reset, so nothing uses them).
enum OpenTaps {
    static let open = Mutex<[NetworkInterfaceConfiguration.Tap: [VirtioNet.Tap]]>([:])

    static func taps(_ tap: NetworkInterfaceConfiguration.Tap, queues: Int) throws(VirtioNetError) -> [VirtioNet.Tap] {
        try open.withLock { (open) throws(VirtioNetError) -> [VirtioNet.Tap] in
            if let taps = open[tap], taps.count == queues { return taps }
            open[tap] = nil
            let opened: [VirtioNet.Tap]
            switch tap {
            case let .name(name): opened = try VirtioNet.Tap.open(name: name, queues: queues)
            case let .descriptor(descriptor): opened = [try VirtioNet.Tap(adopting: descriptor)]
            }
            open[tap] = opened
            return opened
        }
    }
}
