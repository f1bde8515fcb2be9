import GuestMemory
import Virtio

/// Numbers fixed by VirtIO 1.2 section 5.10 and Linux's
/// `include/uapi/linux/virtio_vsock.h`.
public enum Vsock {
    /// The host's context identifier: guests reach the host at CID 2.
    public static let hostCID: UInt64 = 2
    /// The lowest CID a guest may have (0 hypervisor, 1 local, 2 host).
    public static let minimumGuestCID: UInt64 = 3
    /// 0xFFFFFFFF is VMADDR_CID_ANY; CIDs are 32-bit in practice.
    public static let maximumGuestCID: UInt64 = 0xFFFF_FFFE
    /// The only socket type this device supports (VIRTIO_VSOCK_TYPE_STREAM).
    public static let streamType: UInt16 = 1
    /// VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE: the sender will receive no more data.
    public static let shutdownReceive: UInt32 = 1
    /// VIRTIO_VSOCK_SHUTDOWN_F_SEND: the sender will send no more data.
    public static let shutdownSend: UInt32 = 2
    /// Queue indices: receive (device to driver), transmit, event.
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    public static let eventQueue = 2
    /// The most payload one packet carries either way (Linux's
    /// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); a longer `len` is malformed.
    public static let maximumPayload: UInt32 = 64 * 1024
}

/// VIRTIO_VSOCK_OP_*.
public enum VsockOperation: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    case request = 1
    case response = 2
    case reset = 3
    case shutdown = 4
    case readWrite = 5
    case creditUpdate = 6
    case creditRequest = 7

    public var description: String {
        switch self {
        case .request: "REQUEST"
        case .response: "RESPONSE"
        case .reset: "RST"
        case .shutdown: "SHUTDOWN"
        case .readWrite: "RW"
        case .creditUpdate: "CREDIT_UPDATE"
        case .creditRequest: "CREDIT_REQUEST"
        }
    }
}

/// struct virtio_vsock_hdr: 44 little-endian bytes in front of every packet.
public struct VsockHeader: Equatable, Sendable {
    public static let size = 44

    public var sourceCID: UInt64 = 0
    public var destinationCID: UInt64 = 0
    public var sourcePort: UInt32 = 0
    public var destinationPort: UInt32 = 0
    /// Payload bytes after the header.
    public var length: UInt32 = 0
    public var type: UInt16 = Vsock.streamType
    /// The raw op; `operation` is nil for values the specification does not define.
    public var rawOperation: UInt16 = 0
    public var flags: UInt32 = 0
    /// The sender's receive buffer for this connection.
    public var bufferAllocation: UInt32 = 0
    /// Bytes the sender has taken out of that buffer, ever (wrapping).
    public var forwardCount: UInt32 = 0

    public init() {}

    public init(operation: VsockOperation, sourceCID: UInt64, destinationCID: UInt64, sourcePort: UInt32, destinationPort: UInt32,
                length: UInt32 = 0, flags: UInt32 = 0, bufferAllocation: UInt32 = 0, forwardCount: UInt32 = 0) {
        self.sourceCID = sourceCID
        self.destinationCID = destinationCID
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.length = length
        rawOperation = operation.rawValue
        self.flags = flags
        self.bufferAllocation = bufferAllocation
        self.forwardCount = forwardCount
    }

    public var operation: VsockOperation? { VsockOperation(rawValue: rawOperation) }

    /// Decodes the first 44 bytes of `bytes`; missing bytes read as zero.
    public init(bytes: [UInt8]) {
        func field<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            var value: T = 0
            for index in 0..<MemoryLayout<T>.size where offset + index < bytes.count {
                value |= T(truncatingIfNeeded: bytes[offset + index]) << (8 * index)
            }
            return value
        }
        sourceCID = field(0, UInt64.self)
        destinationCID = field(8, UInt64.self)
        sourcePort = field(16, UInt32.self)
        destinationPort = field(20, UInt32.self)
        length = field(24, UInt32.self)
        type = field(28, UInt16.self)
        rawOperation = field(30, UInt16.self)
        flags = field(32, UInt32.self)
        bufferAllocation = field(36, UInt32.self)
        forwardCount = field(40, UInt32.self)
    }

    /// The 44 wire bytes.
    public var bytes: [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(Self.size)
        func append<T: FixedWidthInteger>(_ value: T) {
            for index in 0..<MemoryLayout<T>.size { result.append(UInt8(truncatingIfNeeded: value >> (8 * index))) }
        }
        append(sourceCID)
        append(destinationCID)
        append(sourcePort)
        append(destinationPort)
        append(length)
        append(type)
        append(rawOperation)
        append(flags)
        append(bufferAllocation)
        append(forwardCount)
        return result
    }
}

/// Why a packet the driver put on the TX queue cannot be used.
public enum VsockPacketError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Fewer than 44 device-readable bytes.
    case shortHeader(readable: UInt64)
    /// `len` exceeds the largest payload a packet may carry.
    case oversizedPayload(length: UInt32)
    /// `len` exceeds the readable bytes after the header.
    case payloadBeyondChain(length: UInt32, readable: UInt64)
    /// An RX chain with device-readable buffers, or too small for a header.
    case unusableReceiveChain(writable: UInt64, readable: UInt64)

    public var description: String {
        switch self {
        case let .shortHeader(readable): "TX packet has \(readable) readable bytes, fewer than the \(VsockHeader.size)-byte header"
        case let .oversizedPayload(length): "TX packet len \(length) exceeds the \(Vsock.maximumPayload)-byte maximum"
        case let .payloadBeyondChain(length, readable): "TX packet len \(length) exceeds the \(readable) bytes after its header"
        case let .unusableReceiveChain(writable, readable): "RX chain with \(writable) writable and \(readable) readable bytes (needs only writable ones, at least \(VsockHeader.size))"
        }
    }
}

/// A packet the driver transmitted: its header and the guest buffers
/// holding exactly `header.length` payload bytes.
public struct VsockTransmitPacket: Sendable, Equatable {
    public let header: VsockHeader
    public let payload: [GuestBuffer]

    /// Reads and validates the header of a TX chain: the header must be
    /// there, `len` at most 64 KiB and within the chain. Device-writable
    /// buffers of a TX chain are ignored.
    public static func parse(_ chain: DescriptorChain, memory: GuestMemory) throws(VsockPacketError) -> VsockTransmitPacket {
        var reader = ChainReader(memory: memory, buffers: chain.readable)
        let readable = reader.remaining
        guard readable >= UInt64(VsockHeader.size),
              let bytes = try? reader.readBytes(count: VsockHeader.size) else {
            throw .shortHeader(readable: readable)
        }
        let header = VsockHeader(bytes: bytes)
        guard header.length <= Vsock.maximumPayload else { throw .oversizedPayload(length: header.length) }
        let after = reader.remaining
        guard UInt64(header.length) <= after else { throw .payloadBeyondChain(length: header.length, readable: after) }
        return VsockTransmitPacket(header: header, payload: trim(reader.remainingBuffers, to: UInt64(header.length)))
    }

    init(header: VsockHeader, payload: [GuestBuffer]) {
        self.header = header
        self.payload = payload
    }
}

/// The first `length` bytes of `buffers`.
func trim(_ buffers: [GuestBuffer], to length: UInt64) -> [GuestBuffer] {
    var left = length
    var result: [GuestBuffer] = []
    for buffer in buffers where left > 0 {
        let take = min(UInt64(buffer.length), left)
        result.append(GuestBuffer(address: buffer.address, length: UInt32(take)))
        left -= take
    }
    return result
}
