import HostSystem
import Synchronization
import Virtio

/// A virtio-blk device (VirtIO 1.2 section 5.2) on a raw image: one request
/// queue, served by its own worker thread.
public final class VirtioBlockDevice: VirtioDevice {
    public let deviceType = VirtioDeviceType.block
    public let queueMaximumSizes: [UInt16] = [BlockLimits.queueSize]
    public let offeredFeatures: UInt64
    public let counters = VirtioCounters()
    public let disk: DiskImage
    /// The id GET_ID returns (the guest's /sys/block/vdX/serial).
    public let identifier: String
    let identifierBytes: [UInt8]
    /// struct virtio_blk_config; fixed, since the image never changes size.
    let configurationSpace: [UInt8]

    struct Running: Sendable {
        let worker: VirtioWorker
        let handler: BlockEventHandler
    }
    let running = Mutex<Running?>(nil)

    /// A device serving `disk`, answering GET_ID with `identifier`.
    public init(disk: DiskImage, identifier: String) throws(VirtioBlockError) {
        try Self.validate(identifier: identifier)
        self.disk = disk
        self.identifier = identifier
        identifierBytes = Array(identifier.utf8) + [UInt8](repeating: 0, count: BlockLimits.identifierSize - identifier.utf8.count)
        var features = VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
            | BlockFeature.segmentMaximum | BlockFeature.blockSize | BlockFeature.flush
        // Discard and write-zeroes only make sense on a writable disk.
        features |= disk.readOnly ? BlockFeature.readOnly : BlockFeature.discard | BlockFeature.writeZeroes
        offeredFeatures = features
        configurationSpace = Self.configurationSpace(for: disk)
    }

    /// Opens `path` and builds the device.
    public convenience init(path: String, identifier: String, readOnly: Bool = false, directIO: Bool = false) throws(VirtioBlockError) {
        try self.init(disk: DiskImage(path: path, readOnly: readOnly, directIO: directIO), identifier: identifier)
    }

    /// A disk id must fit GET_ID's 20 bytes and read well in logs and
    /// /sys/block/vdX/serial: letters, digits, '-', '_' and '.'.
    public static func validate(identifier: String) throws(VirtioBlockError) {
        let bytes = Array(identifier.utf8)
        guard (1...BlockLimits.identifierSize).contains(bytes.count),
              bytes.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E })
        else { throw .invalidIdentifier(identifier) }
    }

    static func configurationSpace(for disk: DiskImage) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: BlockConfigurationOffset.size)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { raw in
                for (index, byte) in raw.enumerated() { bytes[offset + index] = byte }
            }
        }
        put(disk.capacityInSectors, at: BlockConfigurationOffset.capacity)
        put(BlockLimits.maximumSegments, at: BlockConfigurationOffset.segmentMax)
        put(UInt32(BlockLimits.sectorSize), at: BlockConfigurationOffset.blockSize)
        if !disk.readOnly {
            put(BlockLimits.maximumDiscardSectors, at: BlockConfigurationOffset.maximumDiscardSectors)
            put(BlockLimits.maximumDiscardSegments, at: BlockConfigurationOffset.maximumDiscardSegments)
            // The host file system's block: discarding less frees nothing.
            put(UInt32(disk.preferredBlockSize / BlockLimits.sectorSize), at: BlockConfigurationOffset.discardSectorAlignment)
            put(BlockLimits.maximumWriteZeroesSectors, at: BlockConfigurationOffset.maximumWriteZeroesSectors)
            put(BlockLimits.maximumWriteZeroesSegments, at: BlockConfigurationOffset.maximumWriteZeroesSegments)
            put(UInt8(1), at: BlockConfigurationOffset.writeZeroesMayUnmap)
        }
        return bytes
    }

    // MARK: VirtioDevice

    public func readConfiguration(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in 0..<data.count {
            let (position, overflow) = offset.addingReportingOverflow(UInt64(index))
            data[index] = !overflow && position < UInt64(configurationSpace.count) ? configurationSpace[Int(position)] : 0
        }
    }

    /// Nothing in the block configuration is writable without CONFIG_WCE,
    /// which this device does not offer.
    public func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {}

    public func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {
        let name = "virtio-blk \(identifier)"
        guard let queue = activation.queues.first(where: { $0.index == 0 }) else {
            throw .activation(device: name, step: "finding the request queue", cause: "the driver did not enable queue 0")
        }
        let processor = BlockRequestProcessor(disk: disk, memory: activation.memory, features: activation.features,
                                              identifier: identifierBytes, counters: counters)
        let handler = BlockEventHandler(processor: processor, queue: queue, interrupt: activation.interrupt, name: name)
        let worker: VirtioWorker
        do {
            worker = try VirtioWorker(name: "blk-\(identifier)", descriptors: [queue.notification.descriptor.rawValue]) { _ in
                handler.notified()
            }
        } catch {
            throw .activation(device: name, step: "starting the I/O thread", cause: "\(error)")
        }
        // A second DRIVER_OK without a reset replaces the first activation.
        let previous = running.withLock { running in
            let previous = running
            running = Running(worker: worker, handler: handler)
            return previous
        }
        previous?.worker.stop()
    }

    public func reset() {
        let previous = running.withLock { running in
            let previous = running
            running = nil
            return previous
        }
        // Joins the worker: once this returns no thread touches guest memory for us.
        previous?.worker.stop()
    }
}
