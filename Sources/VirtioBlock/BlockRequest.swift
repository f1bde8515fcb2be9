import GuestMemory
import Virtio

/// One range of a DISCARD or WRITE_ZEROES request, in sectors.
public struct BlockRange: Sendable, Equatable {
    public let sector: UInt64
    public let sectors: UInt32
    /// WRITE_ZEROES may deallocate the range (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).
    public let unmap: Bool

    public init(sector: UInt64, sectors: UInt32, unmap: Bool = false) {
        self.sector = sector
        self.sectors = sectors
        self.unmap = unmap
    }
}

/// What the device needs to know to judge a request: the disk and the
/// features the driver accepted.
public struct BlockRequestLimits: Sendable, Equatable {
    /// Disk size in 512-byte sectors.
    public var capacity: UInt64
    public var readOnly: Bool
    /// Negotiated feature bits (DISCARD and WRITE_ZEROES requests need theirs).
    public var features: UInt64

    public init(capacity: UInt64, readOnly: Bool, features: UInt64) {
        self.capacity = capacity
        self.readOnly = readOnly
        self.features = features
    }
}

/// A validated virtio-blk request (VirtIO 1.2 section 5.2.6): the chain is
/// a 16-byte header (type, reserved, sector) in device-readable memory, the
/// data, and one status byte, the last device-writable byte.
public struct BlockRequest: Sendable, Equatable {
    public enum Operation: Sendable, Equatable {
        /// IN: fill `buffers` from the disk starting at `sector`.
        case read(sector: UInt64, buffers: [GuestBuffer], length: UInt64)
        /// OUT: write `buffers` to the disk starting at `sector`.
        case write(sector: UInt64, buffers: [GuestBuffer], length: UInt64)
        case flush
        /// GET_ID: 20 bytes of disk id into `buffers`.
        case getID(buffers: [GuestBuffer])
        case discard([BlockRange])
        case writeZeroes([BlockRange])
    }

    public let operation: Operation

    /// The bytes a bandwidth limiter charges: the data of IN and OUT (other
    /// requests cost one operation and no bandwidth, as in Firecracker).
    public var transferLength: UInt64 {
        switch operation {
        case let .read(_, _, length), let .write(_, _, length): length
        default: 0
        }
    }

    /// Where the status byte goes: the last device-writable byte, or nil when
    /// the chain has none (the request cannot even be failed; the device
    /// returns it with nothing written).
    public static func statusAddress(of chain: DescriptorChain) -> GuestAddress? {
        guard let last = chain.writable.last(where: { $0.length > 0 }) else { return nil }
        return last.address.adding(UInt64(last.length) - 1)
    }

    /// The device-writable buffers before the status byte.
    static func writableData(of chain: DescriptorChain) -> [GuestBuffer] {
        guard let lastIndex = chain.writable.lastIndex(where: { $0.length > 0 }) else { return [] }
        var data = Array(chain.writable[..<lastIndex].filter { $0.length > 0 })
        let last = chain.writable[lastIndex]
        if last.length > 1 { data.append(GuestBuffer(address: last.address, length: last.length - 1)) }
        return data
    }

    /// Parses and validates `chain`, which must have a status byte
    /// (`statusAddress(of:)` is non-nil). Every field is checked against
    /// `limits` before anything touches the disk.
    public static func parse(_ chain: DescriptorChain, memory: GuestMemory, limits: BlockRequestLimits) throws(BlockRequestError) -> BlockRequest {
        var reader = ChainReader(memory: memory, buffers: chain.readable)
        let readableLength = reader.remaining
        guard readableLength >= BlockLimits.headerSize else { throw .headerTooShort(length: readableLength) }
        func next<T: GuestMemoryValue>(_: T.Type, orElse failure: BlockRequestError) throws(BlockRequestError) -> T {
            let value: T?
            do {
                value = try reader.read(T.self)
            } catch {
                throw .memory(error)
            }
            guard let value else { throw failure }
            return value
        }
        let type: UInt32, sector: UInt64
        let readableData: [GuestBuffer]
        if let first = chain.readable.first, first.length == UInt32(BlockLimits.headerSize), let sectorField = first.address.adding(8) {
            // The usual layout (Linux, the kit): the header alone in the first buffer.
            do {
                type = UInt32(littleEndian: try memory.read(UInt32.self, at: first.address))
                sector = UInt64(littleEndian: try memory.read(UInt64.self, at: sectorField))
            } catch {
                throw .memory(error)
            }
            readableData = Array(chain.readable.dropFirst())
            reader = ChainReader(memory: memory, buffers: readableData)
        } else {
            let shortHeader = BlockRequestError.headerTooShort(length: readableLength)
            type = UInt32(littleEndian: try next(UInt32.self, orElse: shortHeader))
            _ = try next(UInt32.self, orElse: shortHeader) // reserved (the legacy ioprio)
            sector = UInt64(littleEndian: try next(UInt64.self, orElse: shortHeader))
            readableData = reader.remainingBuffers
        }
        let readableDataLength = readableLength - BlockLimits.headerSize
        let writableData = writableData(of: chain)
        let writableDataLength = writableData.reduce(UInt64(0)) { $0 + UInt64($1.length) }

        func expectNoReadableData() throws(BlockRequestError) {
            guard readableDataLength == 0 else { throw .unexpectedReadableData(type: type, length: readableDataLength) }
        }
        func expectNoWritableData() throws(BlockRequestError) {
            guard writableDataLength == 0 else { throw .unexpectedWritableData(type: type, length: writableDataLength) }
        }
        func checkRange(_ sector: UInt64, sectors: UInt64) throws(BlockRequestError) {
            let (end, overflow) = sector.addingReportingOverflow(sectors)
            guard !overflow, end <= limits.capacity else {
                throw .sectorRangeOutOfBounds(sector: sector, sectors: sectors, capacity: limits.capacity)
            }
        }

        switch type {
        case BlockRequestType.read:
            try expectNoReadableData()
            guard writableDataLength % BlockLimits.sectorSize == 0 else {
                throw .dataNotSectorMultiple(type: type, length: writableDataLength)
            }
            try checkRange(sector, sectors: writableDataLength / BlockLimits.sectorSize)
            return BlockRequest(operation: .read(sector: sector, buffers: writableData, length: writableDataLength))

        case BlockRequestType.write:
            try expectNoWritableData()
            guard !limits.readOnly else { throw .readOnly(type: type) }
            guard readableDataLength % BlockLimits.sectorSize == 0 else {
                throw .dataNotSectorMultiple(type: type, length: readableDataLength)
            }
            try checkRange(sector, sectors: readableDataLength / BlockLimits.sectorSize)
            return BlockRequest(operation: .write(sector: sector, buffers: readableData, length: readableDataLength))

        case BlockRequestType.flush:
            try expectNoReadableData()
            try expectNoWritableData()
            return BlockRequest(operation: .flush)

        case BlockRequestType.getID:
            try expectNoReadableData()
            guard writableDataLength >= UInt64(BlockLimits.identifierSize) else {
                throw .identifierBufferTooShort(length: writableDataLength)
            }
            return BlockRequest(operation: .getID(buffers: writableData))

        case BlockRequestType.discard, BlockRequestType.writeZeroes:
            let isDiscard = type == BlockRequestType.discard
            try expectNoWritableData()
            guard !limits.readOnly else { throw .readOnly(type: type) }
            guard limits.features & (isDiscard ? BlockFeature.discard : BlockFeature.writeZeroes) != 0 else {
                throw .unsupportedType(type)
            }
            guard readableDataLength > 0, readableDataLength % BlockLimits.segmentSize == 0 else {
                throw .invalidSegmentList(type: type, length: readableDataLength)
            }
            let count = readableDataLength / BlockLimits.segmentSize
            let maximumSegments = isDiscard ? BlockLimits.maximumDiscardSegments : BlockLimits.maximumWriteZeroesSegments
            let maximumSectors = isDiscard ? BlockLimits.maximumDiscardSectors : BlockLimits.maximumWriteZeroesSectors
            guard count <= UInt64(maximumSegments) else { throw .tooManySegments(type: type, count: count, maximum: maximumSegments) }
            var ranges: [BlockRange] = []
            for _ in 0..<count {
                let short = BlockRequestError.invalidSegmentList(type: type, length: readableDataLength)
                let start = UInt64(littleEndian: try next(UInt64.self, orElse: short))
                let sectors = UInt32(littleEndian: try next(UInt32.self, orElse: short))
                let flags = UInt32(littleEndian: try next(UInt32.self, orElse: short))
                // Unknown flags, and unmap on a discard, are UNSUPP (5.2.6.1).
                guard flags & ~BlockLimits.unmapFlag == 0, !(isDiscard && flags != 0) else {
                    throw .unsupportedFlags(type: type, flags: flags)
                }
                guard sectors <= maximumSectors else { throw .segmentTooLarge(type: type, sectors: sectors, maximum: maximumSectors) }
                try checkRange(start, sectors: UInt64(sectors))
                ranges.append(BlockRange(sector: start, sectors: sectors, unmap: flags & BlockLimits.unmapFlag != 0))
            }
            return BlockRequest(operation: isDiscard ? .discard(ranges) : .writeZeroes(ranges))

        default:
            throw .unsupportedType(type)
        }
    }
}
