import Devices
import SnapshotFormat
import Virtio
import VirtioMMIO
import VirtioPCI

/// Device state in a snapshot: one section per device, in device order.
///
///   SERI  the 8250 (registers; its input FIFO is dropped)
///   VMIO  one per virtio-mmio device: page address, device type, transport
///         registers, interrupt state, queue walking state, device state
///   VPCI  one per virtio-pci function: slot, device type, configuration
///         space, MSI-X table and pending bits, vectors and ISR, then as VMIO
///
/// The i8042 and the ACPI power device hold no state; neither does the PCI
/// host bridge that matters to a guest (its header is fixed).
extension VirtualMachine {
    /// Every device's state, one tagged section per device, read while the
    /// VM is paused (vCPUs parked). Each virtio device is held first: its
    /// worker finishes the requests it took and starts no other, so nothing
    /// is in flight and guest RAM no longer changes; `resume()` lets the
    /// devices go on. Copy guest memory after this call (`copyGuestMemory`
    /// holds the devices as well, so either order is consistent).
    public func captureDeviceSections() throws(VMMError) -> [SnapshotSection] {
        // Under the pause gate's lock, as the KVM capture: no vCPU leaves meanwhile.
        let captured = try pauseGate.whileAllParked { () throws(VMMError) -> [SnapshotSection] in try captureDeviceSectionsParked() }
        guard let captured else { throw .notPaused(action: "capture the device state") }
        return captured
    }

    private func captureDeviceSectionsParked() throws(VMMError) -> [SnapshotSection] {
        devicesHeld.withLock { $0 = true }
        let serialState = serial.captureState()
        var sections = [SnapshotSection(tag: Serial8250State.tag) { serialState.encode(into: &$0) }]
        for (index, transport) in (mmio?.transports ?? []).enumerated() {
            let snapshot: VirtioMMIOSnapshot
            do {
                snapshot = try transport.captureSnapshot()
            } catch {
                throw .deviceSnapshot(device: Self.mmioDeviceName(index, transport), cause: error)
            }
            sections.append(SnapshotSection(tag: VirtioMMIOSnapshot.tag) { snapshot.encode(into: &$0) })
        }
        for (index, transport) in (pci?.transports ?? []).enumerated() {
            let snapshot: VirtioPCISnapshot
            do {
                snapshot = try transport.captureSnapshot()
            } catch {
                throw .pciDeviceSnapshot(device: Self.pciDeviceName(index, transport), cause: error)
            }
            sections.append(SnapshotSection(tag: VirtioPCISnapshot.tag) { snapshot.encode(into: &$0) })
        }
        return sections
    }

    /// Holds every virtio device as `captureDeviceSections` does, so a
    /// memory copy sees no device write; devices that cannot be saved are
    /// left running (their capture refuses later anyway).
    func holdDevicesForSnapshot() {
        devicesHeld.withLock { $0 = true }
        for transport in mmio?.transports ?? [] { _ = try? transport.captureSnapshot() }
        for transport in pci?.transports ?? [] { _ = try? transport.captureSnapshot() }
    }

    /// Lets devices held for a snapshot serve their queues again.
    func releaseDevicesAfterSnapshot() {
        let held = devicesHeld.withLock { held in
            defer { held = false }
            return held
        }
        guard held else { return }
        for transport in mmio?.transports ?? [] { transport.resumeAfterSnapshot() }
        for transport in pci?.transports ?? [] { transport.resumeAfterSnapshot() }
    }

    static func pciDeviceName(_ index: Int, _ transport: VirtioPCITransport) -> String {
        "device \(index) (\(transport.device.deviceType) at PCI \(transport.address))"
    }

    static func mmioDeviceName(_ index: Int, _ transport: VirtioMMIOTransport) -> String {
        "device \(index) (\(transport.device.deviceType) at MMIO 0x\(String(transport.base, radix: 16)))"
    }

    /// Puts the devices back from `captureDeviceSections()`'s sections, on a
    /// VM built for a restore, before any vCPU runs. The saved device list
    /// must be the configured one: same kinds, same order, same addresses.
    /// An empty list (a machine saved without devices) leaves them fresh.
    func restoreDeviceSections(_ sections: [SnapshotSection]) throws(VMMError) {
        guard !sections.isEmpty else { return }
        var remaining = sections[...]
        guard let serialSection = remaining.popFirst(), serialSection.tag == Serial8250State.tag else {
            throw .snapshotMismatch(part: "the first device section", saved: "'\(sections[0].tag)'", configured: "'\(Serial8250State.tag)' (the serial port)")
        }
        var decoder = StateDecoder(serialSection.body)
        do {
            let state = try Serial8250State.decode(from: &decoder)
            try decoder.finish()
            serial.restore(state)
        } catch {
            throw .deviceStateDecoding(device: "the serial port", cause: error)
        }

        let savedVirtio = Array(remaining)
        if let pci {
            try restorePCIDevices(savedVirtio, pci.transports)
            return
        }
        try Self.restoreVirtioDevices(
            savedVirtio, into: mmio?.transports ?? [], tag: VirtioMMIOSnapshot.tag, name: Self.mmioDeviceName,
            decode: { decoder, transport, name in
                let header = try VirtioMMIOSnapshot.decodeHeader(from: &decoder)
                try Self.checkKind(saved: header.deviceType, configured: transport.device.deviceType, name: name)
                guard header.base == transport.base else {
                    throw VMMError.snapshotMismatch(part: "\(name)'s address", saved: "0x\(String(header.base, radix: 16))",
                                                    configured: "0x\(String(transport.base, radix: 16))")
                }
                return try transport.decodeSnapshotBody(&decoder, base: header.base, deviceType: header.deviceType)
            },
            restore: { (transport, snapshot: VirtioMMIOSnapshot, name) throws(VMMError) in
                do throws(VirtioMMIOError) {
                    try transport.restore(snapshot)
                } catch {
                    throw .deviceSnapshot(device: name, cause: error)
                }
            })
    }

    /// Decodes every saved virtio device and checks it against its
    /// configured counterpart before any is restored (the first differing
    /// device is named, nothing is half-restored), then restores them.
    private static func restoreVirtioDevices<Transport, Snapshot>(
        _ saved: [SnapshotSection], into transports: [Transport], tag: SectionTag,
        name: (Int, Transport) -> String,
        decode: (inout StateDecoder, Transport, String) throws -> Snapshot,
        restore: (Transport, Snapshot, String) throws(VMMError) -> Void
    ) throws(VMMError) {
        var snapshots: [Snapshot] = []
        for (index, (section, transport)) in zip(saved, transports).enumerated() {
            let deviceName = name(index, transport)
            snapshots.append(try decodeDeviceSection(section, tag: tag, name: deviceName) { decoder in
                try decode(&decoder, transport, deviceName)
            })
        }
        guard saved.count == transports.count else {
            throw .snapshotMismatch(part: "the number of virtio devices", saved: "\(saved.count)", configured: "\(transports.count)")
        }
        for (index, (snapshot, transport)) in zip(snapshots, transports).enumerated() {
            try restore(transport, snapshot, name(index, transport))
        }
    }

    /// Decodes one virtio device's section with `body`, which must read it
    /// to its end; a decoding failure becomes an error naming the device.
    private static func decodeDeviceSection<Snapshot>(_ section: SnapshotSection, tag: SectionTag, name: String,
                                                      _ body: (inout StateDecoder) throws -> Snapshot) throws(VMMError) -> Snapshot {
        guard section.tag == tag else {
            throw .snapshotMismatch(part: "\(name)'s section", saved: "'\(section.tag)'", configured: "'\(tag)'")
        }
        var decoder = StateDecoder(section.body)
        do {
            let snapshot = try body(&decoder)
            try decoder.finish()
            return snapshot
        } catch let error as VMMError {
            throw error
        } catch let error as StateDecodingError {
            throw .deviceStateDecoding(device: name, cause: error)
        } catch {
            throw .deviceStateDecoding(device: name, cause: .invalidValue(offset: decoder.offset, what: "\(error)"))
        }
    }

    /// The saved device must be the configured device's kind.
    private static func checkKind(saved: UInt16, configured: VirtioDeviceType, name: String) throws(VMMError) {
        guard saved == configured.rawValue else {
            let savedKind = VirtioDeviceType(rawValue: saved).map { "\($0)" } ?? "device type \(saved)"
            throw .snapshotMismatch(part: "\(name)'s kind", saved: savedKind, configured: "\(configured)")
        }
    }

    private func restorePCIDevices(_ savedVirtio: [SnapshotSection], _ transports: [VirtioPCITransport]) throws(VMMError) {
        try Self.restoreVirtioDevices(
            savedVirtio, into: transports, tag: VirtioPCISnapshot.tag, name: Self.pciDeviceName,
            decode: { decoder, transport, name in
                let header = try VirtioPCISnapshot.decodeHeader(from: &decoder)
                try Self.checkKind(saved: header.deviceType, configured: transport.device.deviceType, name: name)
                guard header.slot == transport.address.device else {
                    throw VMMError.snapshotMismatch(part: "\(name)'s slot", saved: "\(header.slot)", configured: "\(transport.address.device)")
                }
                return try transport.decodeSnapshotBody(&decoder, slot: header.slot, deviceType: header.deviceType)
            },
            restore: { (transport, snapshot: VirtioPCISnapshot, name) throws(VMMError) in
                do throws(VirtioPCISnapshotError) {
                    try transport.restore(snapshot)
                } catch {
                    throw .pciDeviceSnapshot(device: name, cause: error)
                }
            })
    }
}
