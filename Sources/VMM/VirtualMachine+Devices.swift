import RateLimiter
import VirtioBlock
import VirtioNet

/// Changes the control API makes to devices of a running VM (Firecracker's
/// PATCH /drives and PATCH /network-interfaces). Safe from any thread; each
/// returns once the device has the change, which its worker applies between
/// two requests: no vCPU waits.
extension VirtualMachine {
    /// The block device named `id` (a drive id or `--disk id=`).
    func blockDevice(id: String) -> VirtioBlockDevice? {
        virtioDevices.lazy.compactMap { $0 as? VirtioBlockDevice }.first { $0.name == id }
    }

    /// The network device of interface `id`, in the configuration's order.
    func networkDevice(id: String) -> VirtioNetDevice? {
        guard let index = configuration.networkInterfaces.firstIndex(where: { $0.id == id }) else { return nil }
        let devices = virtioDevices.compactMap { $0 as? VirtioNetDevice }
        return index < devices.count ? devices[index] : nil
    }

    /// Points drive `id` at the image at `path` (opened and checked first:
    /// on any error the drive keeps its image) and/or updates its rate
    /// limiter. The guest gets a configuration-change interrupt and sees
    /// the new capacity.
    public func updateDrive(id: String, path: String? = nil, rateLimiter: RateLimiterUpdate = .none) throws(VMMError) {
        guard let device = blockDevice(id: id) else {
            throw .invalidConfiguration(field: "drive", value: id, expected: "the id of one of this VM's drives")
        }
        var image: DiskImage?
        if let path {
            do {
                let opened = try DiskImage(path: path, readOnly: device.readOnly, directIO: device.directIO, lockNow: false)
                // The same file attached writable twice would be corrupted by two caches.
                let others = virtioDevices.compactMap { ($0 as? VirtioBlockDevice).flatMap { $0 === device ? nil : $0.disk } }
                try DiskImage.checkDistinct(others + [opened])
                // Locked after that check; the drive's own image hands over its lock if it is the same file.
                // The old image's lock goes with its descriptor once the worker lets go of it.
                try opened.acquireLock(replacing: device.disk)
                image = opened
            } catch {
                throw .disk(error)
            }
        }
        do {
            try device.update(disk: image, rateLimiter: rateLimiter)
        } catch {
            throw .disk(error)
        }
    }

    /// Updates the receive and transmit rate limiters of interface `id`.
    public func updateNetworkInterface(id: String, receive: RateLimiterUpdate = .none, transmit: RateLimiterUpdate = .none) throws(VMMError) {
        guard let device = networkDevice(id: id) else {
            throw .invalidConfiguration(field: "network interface", value: id, expected: "the id of one of this VM's network interfaces")
        }
        device.updateRateLimiters(receive: receive, transmit: transmit)
    }
}
