import CKVM
import Glibc
import HostSystem
import Synchronization

/// What the device needs from its host side: a non-blocking descriptor that
/// carries one Ethernet frame per read/write, each behind a 12-byte
/// virtio_net_hdr_v1. `Tap` is the real one; tests use a socket pair.
public protocol TapBackend: AnyObject, Sendable {
    /// Polled by the device's worker for readable frames.
    var descriptor: Int32 { get }
    /// Names the tap in messages (a multi-queue tap's queues: "NAME queue N").
    var label: String { get }
    /// The interface as the user named it, shared by all its queues.
    var interfaceName: String { get }
    /// Tells the host which offloads (TUN_F_* bits) the driver accepts, so
    /// it hands over only frames the driver can take.
    func setOffloads(_ flags: UInt32) throws(VirtioNetError)
    /// readv of one frame (header first). Returns the frame's full length,
    /// which exceeds the vectors' capacity when the frame was truncated.
    /// Throws EAGAIN when no frame is waiting.
    func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int
    /// writev of one frame (header first).
    func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int
    /// Attaches or detaches this queue of a multi-queue tap, so the host
    /// steers no frames to a queue pair the driver has not enabled.
    /// Idempotent; a no-op for single-queue taps.
    func setQueueAttached(_ attached: Bool) throws(VirtioNetError)
}

extension TapBackend {
    public var interfaceName: String { label }
    public func setQueueAttached(_ attached: Bool) throws(VirtioNetError) {}
}

/// A Linux tap interface opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a
/// 12-byte vnet header, non-blocking.
public final class Tap: TapBackend {
    public let file: OwnedFileDescriptor
    public let label: String
    public let interfaceName: String
    /// Opened as one queue of several (`open(name:queues:)`).
    let isQueue: Bool
    /// Whether this queue is attached (TUNSETQUEUE), when `isQueue`.
    let attached = Atomic<Bool>(true)
    public var descriptor: Int32 { file.rawValue }

    static let flags = Int16(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    /// IFF_MULTI_QUEUE (linux/if_tun.h), which Glibc does not export.
    static let multiQueueFlag: Int16 = 0x0100
    /// IFNAMSIZ: interface names are at most 15 bytes and a NUL.
    static let interfaceNameSize = 16

    /// Attaches `count` queues (1...16) to the tap `name`: one as `init(name:)`
    /// does, several with IFF_MULTI_QUEUE (the tap must be multi-queue or
    /// not exist yet).
    public static func open(name: String, queues count: Int) throws(VirtioNetError) -> [Tap] {
        guard count > 1 else { return [try Tap(name: name)] }
        var queues: [Tap] = []
        for index in 0..<count {
            queues.append(try Tap(name: name, multiQueue: true, label: "\(name) queue \(index)"))
        }
        return queues
    }

    /// One queue of a multi-queue tap.
    init(name: String, multiQueue: Bool, label: String) throws(VirtioNetError) {
        try Self.validate(name: name)
        self.label = label
        interfaceName = name
        isQueue = multiQueue
        do {
            file = try OwnedFileDescriptor.open("/dev/net/tun", flags: O_RDWR | O_NONBLOCK)
        } catch {
            throw .openTap(tap: name, step: "open /dev/net/tun", cause: error)
        }
        do {
            _ = try systemCall("ioctl TUNSETIFF \(name) IFF_MULTI_QUEUE") {
                ckvm_tun_set_interface(file.rawValue, name, Self.flags | Self.multiQueueFlag)
            }
        } catch {
            throw .openTap(tap: name, step: "TUNSETIFF IFF_MULTI_QUEUE (\(label))", cause: error)
        }
        try setHeaderSize()
    }

    /// Attaches to the tap `name`, creating it if it does not exist (which
    /// needs CAP_NET_ADMIN; an existing tap made for this user does not).
    public init(name: String) throws(VirtioNetError) {
        try Self.validate(name: name)
        label = name
        interfaceName = name
        isQueue = false
        do {
            file = try OwnedFileDescriptor.open("/dev/net/tun", flags: O_RDWR | O_NONBLOCK)
        } catch {
            throw .openTap(tap: name, step: "open /dev/net/tun", cause: error)
        }
        do {
            _ = try systemCall("ioctl TUNSETIFF \(name)") { ckvm_tun_set_interface(file.rawValue, name, Self.flags) }
        } catch where error.errno.rawValue == EINVAL {
            // A persistent tap made multi-queue (as swiftletd makes them) takes only
            // multi-queue attachments: attach as its first queue.
            do {
                _ = try systemCall("ioctl TUNSETIFF \(name) IFF_MULTI_QUEUE") {
                    ckvm_tun_set_interface(file.rawValue, name, Self.flags | Self.multiQueueFlag)
                }
            } catch {
                throw .openTap(tap: name, step: "TUNSETIFF", cause: error)
            }
        } catch {
            throw .openTap(tap: name, step: "TUNSETIFF", cause: error)
        }
        try setHeaderSize()
    }

    /// Uses `descriptor`, an open tap (e.g. passed by a management process
    /// that holds CAP_NET_ADMIN), through a duplicate: the original stays
    /// the caller's, so a VM rebuilt on reboot can use it again. It must have
    /// been attached with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR.
    public init(adopting descriptor: Int32) throws(VirtioNetError) {
        let label = "tap-fd=\(descriptor)"
        isQueue = false
        let duplicate: Int32
        do {
            duplicate = try systemCall("fcntl F_DUPFD_CLOEXEC") { fcntl(descriptor, F_DUPFD_CLOEXEC, 3) }
        } catch {
            throw .notATap(tap: label, reason: "\(descriptor) is not an open file descriptor (\(error.errno))")
        }
        file = OwnedFileDescriptor(adopting: duplicate)
        var name = [CChar](repeating: 0, count: Self.interfaceNameSize)
        var flags: Int16 = 0
        // SAFETY: name has IFNAMSIZ bytes, as ckvm_tun_get_interface writes.
        let attached: Result<Int32, SystemCallError> = name.withUnsafeMutableBufferPointer { buffer in
            Result { () throws(SystemCallError) -> Int32 in
                try systemCall("ioctl TUNGETIFF") { ckvm_tun_get_interface(duplicate, buffer.baseAddress, &flags) }
            }
        }
        if case let .failure(error) = attached {
            throw .notATap(tap: label, reason: "it is not attached to a tun/tap interface (TUNGETIFF: \(error.errno))")
        }
        guard Int32(flags) & IFF_TAP != 0 else { throw .notATap(tap: label, reason: "it is a tun (IP) device, not a tap (Ethernet)") }
        guard Int32(flags) & IFF_VNET_HDR != 0 else { throw .notATap(tap: label, reason: "it was opened without IFF_VNET_HDR") }
        guard Int32(flags) & IFF_NO_PI != 0 else { throw .notATap(tap: label, reason: "it was opened without IFF_NO_PI") }
        self.label = "\(label) (\(String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)))"
        interfaceName = self.label
        do {
            // O_NONBLOCK lives in the open file description, shared with the original.
            let status = try systemCall("fcntl F_GETFL") { fcntl(duplicate, F_GETFL) }
            _ = try systemCall("fcntl F_SETFL") { fcntl(duplicate, F_SETFL, status | O_NONBLOCK) }
        } catch {
            throw .configureTap(tap: self.label, step: "non-blocking mode", cause: error)
        }
        try setHeaderSize()
    }

    /// Interface names are at most IFNAMSIZ-1 bytes, without '/', ':' or whitespace.
    public static func validate(name: String) throws(VirtioNetError) {
        guard !name.isEmpty else { throw .invalidTapName(name, reason: "it is empty") }
        guard name.utf8.count < interfaceNameSize else {
            throw .invalidTapName(name, reason: "longer than \(interfaceNameSize - 1) bytes")
        }
        guard name != ".", name != "..", !name.contains(where: { $0 == "/" || $0 == ":" || $0 == "," || $0.isWhitespace }) else {
            throw .invalidTapName(name, reason: "interface names cannot be '.' or '..' or contain '/', ':', ',' or whitespace")
        }
    }

    func setHeaderSize() throws(VirtioNetError) {
        var size = Int32(VirtioNetHeader.size)
        do {
            try file.ioctl("ioctl TUNSETVNETHDRSZ", CKVM_TUNSETVNETHDRSZ, pointer: &size)
        } catch {
            throw .configureTap(tap: label, step: "TUNSETVNETHDRSZ 12", cause: error)
        }
    }

    public func setOffloads(_ flags: UInt32) throws(VirtioNetError) {
        do {
            try file.ioctl("ioctl TUNSETOFFLOAD", CKVM_TUNSETOFFLOAD, value: UInt(flags))
        } catch {
            throw .configureTap(tap: label, step: "TUNSETOFFLOAD 0x\(String(flags, radix: 16))", cause: error)
        }
    }

    /// IFF_ATTACH_QUEUE and IFF_DETACH_QUEUE (linux/if_tun.h).
    static let attachQueueFlag: Int16 = 0x0200, detachQueueFlag: Int16 = 0x0400

    public func setQueueAttached(_ attached: Bool) throws(VirtioNetError) {
        guard isQueue, self.attached.load(ordering: .relaxed) != attached else { return }
        do {
            _ = try systemCall("ioctl TUNSETQUEUE \(label)") {
                ckvm_tun_set_queue(file.rawValue, attached ? Self.attachQueueFlag : Self.detachQueueFlag)
            }
        } catch {
            throw .configureTap(tap: label, step: attached ? "TUNSETQUEUE IFF_ATTACH_QUEUE" : "TUNSETQUEUE IFF_DETACH_QUEUE", cause: error)
        }
        self.attached.store(attached, ordering: .relaxed)
    }

    public func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        try systemCall("readv \(label)") { ckvm_readv(file.rawValue, vectors.baseAddress, Int32(vectors.count)) }
    }

    public func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemCallError) -> Int {
        try systemCall("writev \(label)") { ckvm_writev(file.rawValue, vectors.baseAddress, Int32(vectors.count)) }
    }
}
