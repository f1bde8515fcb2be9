import SnapshotFormat
import Virtio

/// A virtio-mmio device as a snapshot keeps it: where it was and what it
/// was, the transport's registers, its interrupt state, each running
/// queue's walking state, and the device's own state.
public struct VirtioMMIOSnapshot: Sendable, Equatable {
    public var base: UInt64
    public var deviceType: UInt16
    public var transport: VirtioTransportState
    public var needsReset: Bool
    public var interruptStatus: UInt32
    public var configurationGeneration: UInt32
    /// The device's own state, as its `suspendForSnapshot` encoded it.
    public var device: [UInt8]

    public static let tag = SectionTag("VMIO")
    /// The device's own state is small (a configuration, a few counters).
    public static let maximumDeviceStateLength = 1 << 16

    public func encode(into encoder: inout StateEncoder) {
        encoder.encode(base)
        encoder.encode(deviceType)
        transport.encode(into: &encoder)
        encoder.encode(needsReset)
        encoder.encode(interruptStatus)
        encoder.encode(configurationGeneration)
        encoder.encode(bytes: device)
    }

    /// The header (base and device type) first, so the caller can check it
    /// names the configured device before the rest is read against it.
    public static func decodeHeader(from decoder: inout StateDecoder) throws(StateDecodingError) -> (base: UInt64, deviceType: UInt16) {
        (try decoder.decode(), try decoder.decode())
    }

    /// The rest, for a transport offering `offeredFeatures` with queues of `queueMaximumSizes`.
    public static func decodeBody(from decoder: inout StateDecoder, base: UInt64, deviceType: UInt16,
                                  queueMaximumSizes: [UInt16], offeredFeatures: UInt64) throws(StateDecodingError) -> VirtioMMIOSnapshot {
        let transport = try VirtioTransportState.decode(from: &decoder, queueMaximumSizes: queueMaximumSizes, offeredFeatures: offeredFeatures)
        let needsReset = try decoder.decodeBool()
        let statusOffset = decoder.offset
        let interruptStatus: UInt32 = try decoder.decode()
        let known = VirtioMMIOLayout.interruptUsedBuffer | VirtioMMIOLayout.interruptConfigurationChange
        guard interruptStatus & ~known == 0 else { throw .invalidValue(offset: statusOffset, what: "InterruptStatus 0x\(String(interruptStatus, radix: 16))") }
        let generation: UInt32 = try decoder.decode()
        let device = try decoder.decodeBytes(maximumLength: maximumDeviceStateLength)
        return VirtioMMIOSnapshot(base: base, deviceType: deviceType, transport: transport, needsReset: needsReset,
                                  interruptStatus: interruptStatus, configurationGeneration: generation, device: device)
    }
}

extension VirtioMMIOTransport {
    /// Holds the device (no request in flight, none started) and returns
    /// its state; the VM must be paused. `resumeAfterSnapshot` lets it go on.
    public func captureSnapshot() throws(VirtioMMIOError) -> VirtioMMIOSnapshot {
        try registers.withLock { (registers) throws(VirtioMMIOError) -> VirtioMMIOSnapshot in
            let deviceState: VirtioDeviceSnapshot
            do throws(VirtioDeviceError) {
                deviceState = try device.suspendForSnapshot()
            } catch {
                throw .device(error)
            }
            return VirtioMMIOSnapshot(
                base: base, deviceType: device.deviceType.rawValue, transport: registers.core.savedState(deviceState),
                needsReset: needsReset.load(ordering: .acquiring), interruptStatus: interruptStatus.load(ordering: .acquiring),
                configurationGeneration: configurationGeneration.load(ordering: .acquiring), device: deviceState.device)
        }
    }

    /// Lets a device held by `captureSnapshot` serve its queues again.
    public func resumeAfterSnapshot() {
        device.resumeAfterSnapshot()
    }

    /// Decodes a saved body for this transport's device.
    public func decodeSnapshotBody(_ decoder: inout StateDecoder, base: UInt64, deviceType: UInt16) throws(StateDecodingError) -> VirtioMMIOSnapshot {
        try VirtioMMIOSnapshot.decodeBody(from: &decoder, base: base, deviceType: deviceType,
                                          queueMaximumSizes: device.queueMaximumSizes, offeredFeatures: offeredFeatures)
    }

    /// On a VM built for a restore, before any vCPU runs: puts the registers
    /// back and, if the driver had the device running, starts it as DRIVER_OK
    /// would (queues from their saved walking state, ioeventfds registered,
    /// worker started) without the guest-visible effects of a reset or of a
    /// status write. Each running queue is then notified once, so chains
    /// the driver made available before the capture are served.
    public func restore(_ snapshot: VirtioMMIOSnapshot) throws(VirtioMMIOError) {
        try registers.withLock { (registers) throws(VirtioMMIOError) in
            guard !registers.detached else { throw .detached }
            registers.core.restoreRegisters(snapshot.transport)
            needsReset.store(snapshot.needsReset, ordering: .releasing)
            interruptStatus.store(snapshot.interruptStatus, ordering: .releasing)
            configurationGeneration.store(snapshot.configurationGeneration, ordering: .releasing)
            do throws(VirtioDeviceError) {
                try device.restoreSnapshot(device: snapshot.device)
            } catch {
                throw .device(error)
            }
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
