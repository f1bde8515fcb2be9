import GuestMemory
import Virtio

/// How one chain was completed.
public struct BlockRequestOutcome: Sendable, Equatable {
    /// The status byte written, or nil when the chain had no writable byte for it.
    public let status: UInt8?
    /// Bytes written into the chain's writable buffers, for the used ring.
    public let writtenLength: UInt32
    /// Why the request failed, if it did.
    public let error: BlockRequestError?
}

/// Turns descriptor chains into disk operations: parse, validate, execute,
/// write the status byte. Independent of the queue so that tests and the
/// fuzz target can feed it chains directly.
public struct BlockRequestProcessor: Sendable {
    public let disk: DiskImage
    public let memory: GuestMemory
    public let limits: BlockRequestLimits
    /// GET_ID's answer: the disk id, zero-padded to 20 bytes.
    public let identifier: [UInt8]
    public let counters: VirtioCounters

    public init(disk: DiskImage, memory: GuestMemory, features: UInt64, identifier: [UInt8], counters: VirtioCounters) {
        self.disk = disk
        self.memory = memory
        limits = BlockRequestLimits(capacity: disk.capacityInSectors, readOnly: disk.readOnly, features: features)
        self.identifier = identifier
        self.counters = counters
    }

    /// Serves one chain. Never fails: a bad request completes with IOERR or
    /// UNSUPP, and a chain without a status byte comes back with nothing written.
    public func handle(_ chain: DescriptorChain) -> BlockRequestOutcome {
        serve(chain) { _ in true } ?? BlockRequestOutcome(status: nil, writtenLength: 0, error: nil)
    }

    /// Serves one chain if `admit` accepts its (valid) request; nil, with
    /// nothing done, when it does not (the rate limiter is short of tokens:
    /// the caller keeps the chain for later). Invalid requests are not
    /// offered to `admit`: they complete with an error at once.
    public func handle(_ chain: DescriptorChain, admit: (BlockRequest) -> Bool) -> BlockRequestOutcome? {
        serve(chain, admit: admit)
    }

    @inline(__always)
    func serve(_ chain: DescriptorChain, admit: (BlockRequest) -> Bool) -> BlockRequestOutcome? {
        guard let statusAddress = BlockRequest.statusAddress(of: chain) else {
            counters.requests.wrappingAdd(1, ordering: .relaxed)
            counters.errors.wrappingAdd(1, ordering: .relaxed)
            return BlockRequestOutcome(status: nil, writtenLength: 0, error: nil)
        }
        let status: UInt8
        let dataWritten: UInt64
        let failure: BlockRequestError?
        do {
            let request = try BlockRequest.parse(chain, memory: memory, limits: limits)
            guard admit(request) else { return nil }
            counters.requests.wrappingAdd(1, ordering: .relaxed)
            dataWritten = try execute(request)
            status = BlockStatus.ok
            failure = nil
        } catch {
            counters.requests.wrappingAdd(1, ordering: .relaxed)
            counters.errors.wrappingAdd(1, ordering: .relaxed)
            status = error.status
            dataWritten = 0
            failure = error
        }
        // The queue checked that the address is guest RAM; should the write
        // fail anyway, the driver sees the chain back with nothing written.
        guard (try? memory.write(status, at: statusAddress)) != nil else {
            return BlockRequestOutcome(status: nil, writtenLength: 0, error: failure)
        }
        return BlockRequestOutcome(status: status, writtenLength: UInt32(clamping: dataWritten + 1), error: failure)
    }

    /// Runs a validated request; returns the bytes written into guest buffers.
    func execute(_ request: BlockRequest) throws(BlockRequestError) -> UInt64 {
        let sectorSize = BlockLimits.sectorSize
        switch request.operation {
        case let .read(sector, buffers, length):
            // sector + length/512 ≤ capacity was checked, so these products fit.
            try disk.read(at: sector * sectorSize, into: buffers, memory: memory)
            counters.bytesToGuest.wrappingAdd(length, ordering: .relaxed)
            return length
        case let .write(sector, buffers, length):
            try disk.write(at: sector * sectorSize, from: buffers, memory: memory)
            counters.bytesFromGuest.wrappingAdd(length, ordering: .relaxed)
            return 0
        case .flush:
            try disk.flush()
            return 0
        case let .getID(buffers):
            var writer = ChainWriter(memory: memory, buffers: buffers)
            do {
                return UInt64(try writer.write(bytes: identifier))
            } catch {
                throw .memory(error)
            }
        case let .discard(ranges):
            // fallocate refuses a zero length; an empty range has nothing to do.
            for range in ranges where range.sectors > 0 {
                try disk.discard(at: range.sector * sectorSize, length: UInt64(range.sectors) * sectorSize)
            }
            return 0
        case let .writeZeroes(ranges):
            for range in ranges where range.sectors > 0 {
                try disk.writeZeroes(at: range.sector * sectorSize, length: UInt64(range.sectors) * sectorSize, unmap: range.unmap)
            }
            return 0
        }
    }
}
