import HostSystem
import RateLimiter
import Synchronization
import Virtio

/// What the API may change while the guest runs, shared between the device
/// (the API's side) and its worker (which applies changes between requests).
struct BlockBacking: Sendable {
    var disk: DiskImage
    /// GET_ID's answer, zero-padded to 20 bytes.
    var serialBytes: [UInt8]
    /// struct virtio_blk_config for `disk` once the worker has switched to it.
    var configurationSpace: [UInt8]
    /// The limiter's configuration, updates included.
    var rateLimiter: RateLimiterConfiguration
    /// Updates the worker has not applied yet, merged.
    var pendingLimiterUpdate: RateLimiterUpdate = .none
    /// Bumped on every image change.
    var generation: UInt64 = 0
}

/// `BlockBacking` behind a lock, shared by the device and its worker.
final class BlockBackingStore: Sendable {
    let mutex: Mutex<BlockBacking>

    init(_ backing: BlockBacking) { mutex = Mutex(backing) }

    func withLock<Result: Sendable>(_ body: (inout BlockBacking) -> Result) -> Result {
        mutex.withLock { body(&$0) }
    }
}

/// A virtio-blk device (VirtIO 1.2 section 5.2) on a raw image: one request
/// queue, served by its own worker thread, optionally rate limited. The
/// image and the limiter can be replaced while the guest runs (`update`).
public final class VirtioBlockDevice: VirtioDevice {
    public let deviceType = VirtioDeviceType.block
    public let queueMaximumSizes: [UInt16] = [BlockLimits.queueSize]
    public let offeredFeatures: UInt64
    public let counters = VirtioCounters()
    /// The drive's name (Firecracker's drive_id): messages, thread name, API lookups.
    public let name: String
    /// The GET_ID serial given at creation; nil: derived from each image as Firecracker does.
    public let fixedSerial: String?
    let backing: BlockBackingStore
    /// Read-only and O_DIRECT: fixed for the device's life (features depend on them).
    public let readOnly: Bool
    public let directIO: Bool
    /// The clock rate limiters read; injectable for tests.
    let clock: any RateLimiterClock

    struct Running: Sendable {
        let worker: VirtioWorker
        let handler: BlockEventHandler
        /// Wakes the worker to apply an update.
        let updateEvent: EventFD
        let timer: MonotonicTimer
    }
    let running = Mutex<Running?>(nil)

    /// A device serving `disk`, named `name`. GET_ID answers `serial`, or when
    /// nil the serial Firecracker derives from the image (`derivedSerial`).
    public init(disk: DiskImage, name: String, serial: String? = nil, rateLimiter: RateLimiterConfiguration = .unlimited,
                clock: any RateLimiterClock = MonotonicClock()) throws(VirtioBlockError) {
        if let serial { try Self.validate(identifier: serial) }
        self.name = name
        fixedSerial = serial
        readOnly = disk.readOnly
        directIO = disk.directIO
        self.clock = clock
        var features = VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
            | BlockFeature.segmentMaximum | BlockFeature.blockSize | BlockFeature.flush
        // Discard and write-zeroes only make sense on a writable disk.
        features |= disk.readOnly ? BlockFeature.readOnly : BlockFeature.discard | BlockFeature.writeZeroes
        offeredFeatures = features
        backing = BlockBackingStore(BlockBacking(disk: disk, serialBytes: Self.serialBytes(serial ?? disk.derivedSerial),
                                     configurationSpace: Self.configurationSpace(for: disk), rateLimiter: rateLimiter))
    }

    /// A device serving `disk` whose GET_ID answers `identifier` (also its name).
    public convenience init(disk: DiskImage, identifier: String) throws(VirtioBlockError) {
        try self.init(disk: disk, name: identifier, serial: identifier)
    }

    /// Opens `path` and builds the device.
    public convenience init(path: String, identifier: String, readOnly: Bool = false, directIO: Bool = false) throws(VirtioBlockError) {
        try self.init(disk: DiskImage(path: path, readOnly: readOnly, directIO: directIO), identifier: identifier)
    }

    /// The image served now (or about to be: the worker switches between requests).
    public var disk: DiskImage { backing.withLock { $0.disk } }
    /// What GET_ID returns now.
    public var identifier: String {
        let bytes = backing.withLock { $0.serialBytes }
        return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }
    /// The rate limiter's configuration, updates included.
    public var rateLimiter: RateLimiterConfiguration { backing.withLock { $0.rateLimiter } }

    static func serialBytes(_ serial: String) -> [UInt8] {
        let bytes = Array(serial.utf8.prefix(BlockLimits.identifierSize))
        return bytes + [UInt8](repeating: 0, count: BlockLimits.identifierSize - bytes.count)
    }

    /// A disk id must fit GET_ID's 20 bytes and read well in logs and
    /// /sys/block/vdX/serial: letters, digits, '-', '_' and '.'.
    public static func validate(identifier: String) throws(VirtioBlockError) {
        let bytes = Array(identifier.utf8)
        guard (1...BlockLimits.identifierSize).contains(bytes.count),
              bytes.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E })
        else { throw .invalidIdentifier(identifier) }
    }

    /// Replaces the image (when `disk` is given) and/or changes the rate
    /// limiter, while the guest runs or not. The new image must have been
    /// opened with this device's read-only and O_DIRECT settings. A running
    /// worker switches between two requests, rewrites the capacity in the
    /// configuration space and raises a configuration-change interrupt, so
    /// the driver sees the new size; the serial follows the image unless it
    /// was fixed at creation. Returns at once.
    public func update(disk newDisk: DiskImage? = nil, rateLimiter update: RateLimiterUpdate = .none) throws(VirtioBlockError) {
        if let newDisk {
            guard newDisk.readOnly == readOnly else {
                throw .replacementMismatch(path: newDisk.path, reason: "the disk is \(readOnly ? "read-only" : "writable") and the image was opened \(newDisk.readOnly ? "read-only" : "writable")")
            }
            guard newDisk.directIO == directIO else {
                throw .replacementMismatch(path: newDisk.path, reason: "O_DIRECT must stay \(directIO ? "on" : "off")")
            }
        }
        running.withLock { running in
            backing.withLock { backing in
                if let newDisk {
                    backing.disk = newDisk
                    backing.serialBytes = Self.serialBytes(fixedSerial ?? newDisk.derivedSerial)
                    backing.generation &+= 1
                    // Without a worker nobody else will; with one, it does so as it switches.
                    if running == nil { backing.configurationSpace = Self.configurationSpace(for: newDisk) }
                }
                backing.rateLimiter = backing.rateLimiter.applying(update)
                backing.pendingLimiterUpdate = running == nil ? .none : backing.pendingLimiterUpdate.then(update)
            }
            if let running { try? running.updateEvent.signal() }
        }
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
        let configurationSpace = backing.withLock { $0.configurationSpace }
        for index in 0..<data.count {
            let (position, overflow) = offset.addingReportingOverflow(UInt64(index))
            data[index] = !overflow && position < UInt64(configurationSpace.count) ? configurationSpace[Int(position)] : 0
        }
    }

    /// Nothing in the block configuration is writable without CONFIG_WCE,
    /// which this device does not offer.
    public func writeConfiguration(offset: UInt64, from data: UnsafeRawBufferPointer) {}

    public func activate(_ activation: VirtioActivation) throws(VirtioDeviceError) {
        let label = "virtio-blk \(name)"
        guard let queue = activation.queues.first(where: { $0.index == 0 }) else {
            throw .activation(device: label, step: "finding the request queue", cause: "the driver did not enable queue 0")
        }
        let updateEvent: EventFD, timer: MonotonicTimer
        do {
            updateEvent = try EventFD()
            timer = try MonotonicTimer()
        } catch {
            throw .activation(device: label, step: "creating the update eventfd and rate-limiter timerfd", cause: "\(error)")
        }
        // The hand-over happens under `running`'s lock, so an update either
        // lands before (and is in the backing read here) or signals this worker.
        let result = running.withLock { (running) -> Result<Running?, VirtioDeviceError> in
            // A fresh limiter (full buckets) with the configuration as updated so far.
            let (disk, serial, configuration, generation) = backing.withLock { backing in
                backing.pendingLimiterUpdate = .none
                backing.configurationSpace = Self.configurationSpace(for: backing.disk)
                return (backing.disk, backing.serialBytes, backing.rateLimiter, backing.generation)
            }
            let processor = BlockRequestProcessor(disk: disk, memory: activation.memory, features: activation.features,
                                                  identifier: serial, counters: counters)
            let limiter = RateLimiter(configuration, clock: clock, timer: timer)
            let handler = BlockEventHandler(processor: processor, queue: queue, interrupt: activation.interrupt, name: label,
                                            limiter: limiter, backing: backing, updateEvent: updateEvent, generation: generation)
            let descriptors = BlockEventHandler.descriptors(notification: queue.notification, update: updateEvent, limiter: limiter)
            let worker: VirtioWorker
            do {
                worker = try VirtioWorker(name: "blk-\(name.prefix(11))", descriptors: descriptors) { ready in
                    handler.handle(ready)
                }
            } catch {
                return .failure(.activation(device: label, step: "starting the I/O thread", cause: "\(error)"))
            }
            // A second DRIVER_OK without a reset replaces the first activation.
            let previous = running
            running = Running(worker: worker, handler: handler, updateEvent: updateEvent, timer: timer)
            return .success(previous)
        }
        switch result {
        case let .success(previous): previous?.worker.stop()
        case let .failure(error): throw error
        }
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
