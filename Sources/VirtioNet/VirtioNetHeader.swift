import CKVM
import GuestMemory
import Virtio

/// virtio-net feature bits (VirtIO 1.2 section 5.1.3).
public enum VirtioNetFeature {
    /// The device accepts frames with a partial checksum (NEEDS_CSUM) from the driver.
    public static let checksum: UInt64 = 1 << 0
    /// The driver accepts frames with a partial checksum.
    public static let guestChecksum: UInt64 = 1 << 1
    public static let mtu: UInt64 = 1 << 3
    /// The configuration space holds the MAC address.
    public static let mac: UInt64 = 1 << 5
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    public static let guestECN: UInt64 = 1 << 9
    public static let guestUFO: UInt64 = 1 << 10
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    public static let hostECN: UInt64 = 1 << 13
    public static let hostUFO: UInt64 = 1 << 14
    /// The driver may merge receive buffers: one frame over several chains.
    public static let mergeableReceiveBuffers: UInt64 = 1 << 15
    /// The configuration space holds the link status.
    public static let status: UInt64 = 1 << 16
    /// VIRTIO_NET_F_CTRL_VQ: a control virtqueue after the data queues.
    public static let controlQueue: UInt64 = 1 << 17
    /// VIRTIO_NET_F_MQ: several queue pairs, chosen with VIRTIO_NET_CTRL_MQ.
    public static let multiqueue: UInt64 = 1 << 22

    /// Any of these means the device may hand the driver frames of up to 64 KiB.
    public static let guestSegmentation = guestTSO4 | guestTSO6 | guestUFO
}

/// struct virtio_net_hdr_v1 (section 5.1.6): the 12 bytes in front of every
/// frame, in both directions (VERSION_1 always has num_buffers).
public struct VirtioNetHeader: Equatable, Sendable {
    public static let size = 12

    public var flags: UInt8
    public var gsoType: UInt8
    public var headerLength: UInt16
    public var gsoSize: UInt16
    public var checksumStart: UInt16
    public var checksumOffset: UInt16
    public var bufferCount: UInt16

    // flags
    public static let needsChecksum: UInt8 = 1
    public static let dataValid: UInt8 = 2
    public static let rscInfo: UInt8 = 4
    // gso_type
    public static let gsoNone: UInt8 = 0
    public static let gsoTCPv4: UInt8 = 1
    public static let gsoUDP: UInt8 = 3
    public static let gsoTCPv6: UInt8 = 4
    public static let gsoECN: UInt8 = 0x80

    /// Offset of num_buffers inside the header.
    public static let bufferCountOffset = 10

    public init(flags: UInt8 = 0, gsoType: UInt8 = 0, headerLength: UInt16 = 0, gsoSize: UInt16 = 0,
                checksumStart: UInt16 = 0, checksumOffset: UInt16 = 0, bufferCount: UInt16 = 0) {
        self.flags = flags
        self.gsoType = gsoType
        self.headerLength = headerLength
        self.gsoSize = gsoSize
        self.checksumStart = checksumStart
        self.checksumOffset = checksumOffset
        self.bufferCount = bufferCount
    }

    /// Decodes the first 12 bytes (little-endian); nil if fewer.
    public init?(bytes: [UInt8]) {
        // SAFETY: the array's bytes are read only within this call.
        guard let header = bytes.withUnsafeBytes({ VirtioNetHeader(raw: $0) }) else { return nil }
        self = header
    }

    /// Parses the first 12 bytes of `raw` (nil if it is shorter).
    public init?(raw: UnsafeRawBufferPointer) {
        guard raw.count >= Self.size else { return nil }
        func u16(_ at: Int) -> UInt16 { UInt16(raw[at]) | UInt16(raw[at + 1]) << 8 }
        self.init(flags: raw[0], gsoType: raw[1], headerLength: u16(2), gsoSize: u16(4),
                  checksumStart: u16(6), checksumOffset: u16(8), bufferCount: u16(10))
    }

    /// The 12 bytes as the wire has them (the fields are little-endian and
    /// need no padding, so the in-memory layout of this tuple is the header).
    var wire: (UInt8, UInt8, UInt16, UInt16, UInt16, UInt16, UInt16) {
        (flags, gsoType, headerLength.littleEndian, gsoSize.littleEndian, checksumStart.littleEndian,
         checksumOffset.littleEndian, bufferCount.littleEndian)
    }

    public var bytes: [UInt8] {
        var wire = wire
        // SAFETY: the tuple is 12 bytes of plain integers, read only within this call.
        return withUnsafeBytes(of: &wire) { Array($0) }
    }
}

/// Why a frame the driver transmitted was dropped. The frame is counted and
/// its chain returned; the device keeps running (a bad frame is not a broken
/// queue).
public enum TransmitFrameProblem: Error, Equatable, Sendable, CustomStringConvertible {
    case headerTooShort(length: UInt64)
    case frameTooShort(length: UInt64)
    case frameTooLong(length: UInt64, maximum: Int)
    case writableBuffers
    case unknownFlags(UInt8)
    case checksumNotNegotiated
    case checksumOutsideFrame(start: UInt16, offset: UInt16, frameLength: UInt64)
    case unknownSegmentation(UInt8)
    case segmentationNotNegotiated(UInt8)
    case zeroSegmentSize
    case tooManyBuffers(Int)

    public var description: String {
        switch self {
        case let .headerTooShort(length): "chain of \(length) bytes is shorter than the \(VirtioNetHeader.size)-byte header"
        case let .frameTooShort(length): "frame of \(length) bytes is shorter than an Ethernet header"
        case let .frameTooLong(length, maximum): "frame of \(length) bytes exceeds \(maximum)"
        case .writableBuffers: "transmit chain has device-writable buffers"
        case let .unknownFlags(flags): "unknown header flags 0x\(String(flags, radix: 16))"
        case .checksumNotNegotiated: "NEEDS_CSUM without VIRTIO_NET_F_CSUM"
        case let .checksumOutsideFrame(start, offset, length): "checksum at \(start)+\(offset) is outside the \(length)-byte frame"
        case let .unknownSegmentation(type): "unknown gso_type \(type)"
        case let .segmentationNotNegotiated(type): "gso_type \(type) without the matching HOST_ feature"
        case .zeroSegmentSize: "segmentation offload with gso_size 0"
        case let .tooManyBuffers(count): "\(count) buffers is more than writev takes"
        }
    }
}

/// Frame rules shared by the device and its fuzz target.
public enum VirtioNetFrame {
    /// An Ethernet header.
    public static let minimumLength = 14
    /// 64 KiB of segmentation-offload payload plus an Ethernet header with a VLAN tag.
    public static let maximumLength = 65_536 + 18
    /// Without guest segmentation offloads: a 1500-byte MTU frame with a VLAN tag.
    public static let maximumUnsegmentedLength = 1500 + 18

    /// Checks a transmitted frame's header against the negotiated features and
    /// returns the header to hand the tap (DATA_VALID, RSC_INFO and
    /// num_buffers cleared: the driver must not set them on transmit).
    public static func validateTransmit(header: VirtioNetHeader, frameLength: UInt64, features: UInt64) -> Result<VirtioNetHeader, TransmitFrameProblem> {
        guard frameLength >= UInt64(minimumLength) else { return .failure(.frameTooShort(length: frameLength)) }
        guard frameLength <= UInt64(maximumLength) else { return .failure(.frameTooLong(length: frameLength, maximum: maximumLength)) }
        let known = VirtioNetHeader.needsChecksum | VirtioNetHeader.dataValid | VirtioNetHeader.rscInfo
        guard header.flags & ~known == 0 else { return .failure(.unknownFlags(header.flags)) }
        if header.flags & VirtioNetHeader.needsChecksum != 0 {
            guard features & VirtioNetFeature.checksum != 0 else { return .failure(.checksumNotNegotiated) }
            // The 16-bit checksum field must lie inside the frame.
            guard UInt64(header.checksumStart) + UInt64(header.checksumOffset) + 2 <= frameLength else {
                return .failure(.checksumOutsideFrame(start: header.checksumStart, offset: header.checksumOffset, frameLength: frameLength))
            }
        }
        let type = header.gsoType & ~VirtioNetHeader.gsoECN
        if type != VirtioNetHeader.gsoNone {
            let needed: UInt64
            switch type {
            case VirtioNetHeader.gsoTCPv4: needed = VirtioNetFeature.hostTSO4
            case VirtioNetHeader.gsoTCPv6: needed = VirtioNetFeature.hostTSO6
            case VirtioNetHeader.gsoUDP: needed = VirtioNetFeature.hostUFO
            default: return .failure(.unknownSegmentation(header.gsoType))
            }
            guard features & needed != 0 else { return .failure(.segmentationNotNegotiated(header.gsoType)) }
            guard header.gsoType & VirtioNetHeader.gsoECN == 0 || features & VirtioNetFeature.hostECN != 0 else {
                return .failure(.segmentationNotNegotiated(header.gsoType))
            }
            guard header.gsoSize > 0 else { return .failure(.zeroSegmentSize) }
        } else if header.gsoType != VirtioNetHeader.gsoNone {
            return .failure(.unknownSegmentation(header.gsoType))
        }
        var clean = header
        clean.flags &= VirtioNetHeader.needsChecksum
        clean.bufferCount = 0
        return .success(clean)
    }

    /// Reads and validates a TX chain's header (which may span buffers). The
    /// frame is the chain's readable buffers less their first
    /// `VirtioNetHeader.size` bytes; nothing is copied or allocated.
    public static func parseTransmit(chain: DescriptorChain, memory: GuestMemory, features: UInt64) -> Result<VirtioNetHeader, TransmitFrameProblem> {
        guard chain.writable.isEmpty else { return .failure(.writableBuffers) }
        let total = chain.readableLength
        guard total >= UInt64(VirtioNetHeader.size) else { return .failure(.headerTooShort(length: total)) }
        // At most one more iovec than buffers (the header prefix) goes to writev.
        guard chain.readable.count < maximumIOVectors else { return .failure(.tooManyBuffers(chain.readable.count)) }
        var reader = ChainReader(memory: memory, buffers: chain.readable)
        // SAFETY: the 12-byte stack buffer is filled by the reader and parsed within this call.
        let parsed = withUnsafeTemporaryAllocation(byteCount: VirtioNetHeader.size, alignment: 2) { raw -> VirtioNetHeader? in
            guard (try? reader.read(into: raw)) == VirtioNetHeader.size else { return nil }
            return VirtioNetHeader(raw: UnsafeRawBufferPointer(raw))
        }
        guard let header = parsed else { return .failure(.headerTooShort(length: total)) }
        return validateTransmit(header: header, frameLength: total - UInt64(VirtioNetHeader.size), features: features)
    }

    /// The TUN_F_* offload flags matching what the driver can receive.
    public static func tapOffloads(features: UInt64) -> UInt32 {
        guard features & VirtioNetFeature.guestChecksum != 0 else { return 0 }
        var flags = UInt32(TUN_F_CSUM)
        if features & VirtioNetFeature.guestTSO4 != 0 { flags |= UInt32(TUN_F_TSO4) }
        if features & VirtioNetFeature.guestTSO6 != 0 { flags |= UInt32(TUN_F_TSO6) }
        if features & VirtioNetFeature.guestECN != 0, flags & UInt32(TUN_F_TSO4 | TUN_F_TSO6) != 0 { flags |= UInt32(TUN_F_TSO_ECN) }
        if features & VirtioNetFeature.guestUFO != 0 { flags |= UInt32(TUN_F_UFO) }
        return flags
    }
}

