import SnapshotFormat

extension VirtualMachine {
    /// Every device's state, one tagged section per device, read while the
    /// VM is paused (vCPUs parked). Not yet implemented: no device is saved,
    /// so a restored VM's devices come up fresh.
    public func captureDeviceSections() throws(VMMError) -> [SnapshotSection] {
        []
    }

    /// Puts the devices back from `captureDeviceSections()`'s sections, on a
    /// VM built for a restore, before any vCPU runs.
    func restoreDeviceSections(_ sections: [SnapshotSection]) throws(VMMError) {
    }
}
