import PCI
import SnapshotFormat
import Virtio

/// Why a virtio-pci function's state could not be saved or put back.
public enum VirtioPCISnapshotError: Error, Sendable, CustomStringConvertible {
    /// The device refused to save or take back its own state.
    case device(VirtioDeviceError)
    /// The saved queues could not be started again.
    case restoringQueues(VirtioTransportError)
    /// A read-only byte of the saved configuration space differs from this function's.
    case configurationSpace(offset: Int)
    /// The function was shut down: nothing is restored into it.
    case detached

    public var description: String {
        switch self {
        case let .device(error): "\(error)"
        case let .restoringQueues(error): "restarting the saved queues: \(error)"
        case let .configurationSpace(offset): "the saved configuration space differs from this function's at read-only offset 0x\(String(offset, radix: 16))"
        case .detached: "the function was shut down"
        }
    }
}

/// A virtio-pci function as a snapshot keeps it: its slot and device type,
/// the configuration space (command, BAR 0 as programmed, interrupt line,
/// MSI-X enable and function mask), the MSI-X table and pending bits, the
/// vectors the driver assigned and the ISR, the common configuration's
/// registers with each running queue's walking state, and the device's own state.
public struct VirtioPCISnapshot: Sendable, Equatable {
    public var slot: UInt8
    public var deviceType: UInt16
    public var configuration: [UInt8]
    public var msix: MSIXState
    public var configurationVector: UInt16
    public var queueVectors: [UInt16]
    public var isr: UInt8
    public var transport: VirtioTransportState
    public var needsReset: Bool
    public var configurationGeneration: UInt8
    public var device: [UInt8]

    public static let tag = SectionTag("VPCI")

    public func encode(into encoder: inout StateEncoder) {
        encoder.encode(slot)
        encoder.encode(deviceType)
        encoder.encode(bytes: configuration)
        msix.encode(into: &encoder)
        encoder.encode(configurationVector)
        encoder.encode(array: queueVectors) { $0.encode($1) }
        encoder.encode(isr)
        transport.encode(into: &encoder)
        encoder.encode(needsReset)
        encoder.encode(configurationGeneration)
        encoder.encode(bytes: device)
    }

    public static func decodeHeader(from decoder: inout StateDecoder) throws(StateDecodingError) -> (slot: UInt8, deviceType: UInt16) {
        (try decoder.decode(), try decoder.decode())
    }
}

extension VirtioPCITransport {
    /// Holds the device (no request in flight, none started) and returns
    /// the function's state; the VM must be paused. `resumeAfterSnapshot` lets it go on.
    public func captureSnapshot() throws(VirtioPCISnapshotError) -> VirtioPCISnapshot {
        try registers.withLock { (registers) throws(VirtioPCISnapshotError) -> VirtioPCISnapshot in
            let deviceState: VirtioDeviceSnapshot
            do throws(VirtioDeviceError) {
                deviceState = try device.suspendForSnapshot()
            } catch {
                throw .device(error)
            }
            let (configurationVector, queueVectors, isr) = interrupts.withLock { ($0.configurationVector, $0.queueVectors, $0.isr) }
            return VirtioPCISnapshot(
                slot: address.device, deviceType: device.deviceType.rawValue, configuration: registers.configuration.savedBytes,
                msix: msix.captureState(), configurationVector: configurationVector, queueVectors: queueVectors, isr: isr,
                transport: registers.core.savedState(deviceState), needsReset: needsReset.load(ordering: .acquiring),
                configurationGeneration: configurationGeneration.load(ordering: .acquiring), device: deviceState.device)
        }
    }

    public func resumeAfterSnapshot() {
        device.resumeAfterSnapshot()
    }

    /// Decodes the rest of a saved function (after `decodeHeader`) against
    /// this function: configuration space size, vector count, queue count.
    public func decodeSnapshotBody(_ decoder: inout StateDecoder, slot: UInt8, deviceType: UInt16) throws(StateDecodingError) -> VirtioPCISnapshot {
        let spaceOffset = decoder.offset
        let configuration = try decoder.decodeBytes(maximumLength: PCIConfigurationSpace.size)
        guard configuration.count == PCIConfigurationSpace.size else {
            throw .invalidValue(offset: spaceOffset, what: "configuration space of \(configuration.count) bytes")
        }
        let msix = try MSIXState.decode(from: &decoder, vectorCount: self.msix.vectorCount)
        let vectorCount = self.msix.vectorCount
        func vector(_ decoder: inout StateDecoder) throws(StateDecodingError) -> UInt16 {
            let start = decoder.offset
            let value: UInt16 = try decoder.decode()
            guard value == VirtioPCILayout.noVector || Int(value) < vectorCount else {
                throw .invalidValue(offset: start, what: "MSI-X vector \(value) (\(vectorCount) vectors)")
            }
            return value
        }
        let configurationVector = try vector(&decoder)
        let queueCount = device.queueMaximumSizes.count
        let vectorsOffset = decoder.offset
        let queueVectors = try decoder.decodeArray(maximumCount: queueCount, minimumElementSize: 2) { (decoder) throws(StateDecodingError) in
            try vector(&decoder)
        }
        guard queueVectors.count == queueCount else { throw .invalidValue(offset: vectorsOffset, what: "\(queueVectors.count) queue vectors (\(queueCount) queues)") }
        let isrOffset = decoder.offset
        let isr: UInt8 = try decoder.decode()
        guard isr & ~(VirtioPCILayout.isrQueue | VirtioPCILayout.isrConfiguration) == 0 else {
            throw .invalidValue(offset: isrOffset, what: "ISR 0x\(String(isr, radix: 16))")
        }
        let transport = try VirtioTransportState.decode(from: &decoder, queueMaximumSizes: device.queueMaximumSizes, offeredFeatures: offeredFeatures)
        let needsReset = try decoder.decodeBool()
        let generation: UInt8 = try decoder.decode()
        let deviceState = try decoder.decodeBytes(maximumLength: 1 << 16)
        return VirtioPCISnapshot(slot: slot, deviceType: deviceType, configuration: configuration, msix: msix,
                                 configurationVector: configurationVector, queueVectors: queueVectors, isr: isr, transport: transport,
                                 needsReset: needsReset, configurationGeneration: generation, device: deviceState)
    }

    /// On a VM built for a restore, before any vCPU runs: puts the
    /// configuration space, MSI-X table, vectors and registers back, maps
    /// BAR 0 where the guest had it, installs the routes of deliverable
    /// vectors and the INTx level, and if the driver had the device running
    /// starts it as DRIVER_OK would (queues from their walking state,
    /// ioeventfds on the doorbells, the device's worker), without the
    /// guest-visible effects of a reset or a status write. Each running
    /// queue is then notified once, so chains made available before the
    /// capture are served.
    public func restore(_ snapshot: VirtioPCISnapshot) throws(VirtioPCISnapshotError) {
        try registers.withLock { (registers) throws(VirtioPCISnapshotError) in
            guard !registers.detached else { throw .detached }
            if let offset = registers.configuration.restore(savedBytes: snapshot.configuration) {
                throw .configurationSpace(offset: offset)
            }
            msix.restore(snapshot.msix)
            interrupts.withLock { interrupts in
                interrupts.configurationVector = snapshot.configurationVector
                interrupts.queueVectors = snapshot.queueVectors
                interrupts.isr = snapshot.isr
            }
            registers.core.restoreRegisters(snapshot.transport)
            needsReset.store(snapshot.needsReset, ordering: .releasing)
            configurationGeneration.store(snapshot.configurationGeneration, ordering: .releasing)
            do throws(VirtioDeviceError) {
                try device.restoreSnapshot(device: snapshot.device)
            } catch {
                throw .device(error)
            }
            // BAR placement, MSI-X control (routes for deliverable vectors), INTx.
            applyConfigurationSideEffects(&registers)
            // A device that needed a reset had stopped serving (a broken
            // queue): it stays stopped until the driver resets it, as before.
            guard snapshot.transport.active, !snapshot.needsReset else { return }
            let activation: VirtioActivation
            do throws(VirtioTransportError) {
                activation = try registers.core.startQueues(memory: memory, interrupt: self, restoring: snapshot.transport.queueStates)
            } catch {
                throw .restoringQueues(error)
            }
            registerNotifiers(&registers)
            do throws(VirtioDeviceError) {
                try device.activate(activation)
            } catch {
                throw .device(error)
            }
            for queue in activation.queues { try? queue.notification.signal() }
        }
    }
}
