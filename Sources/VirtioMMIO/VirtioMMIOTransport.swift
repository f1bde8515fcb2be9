import Devices
import GuestMemory
import HostSystem
import Synchronization
import Virtio

/// One VirtIO device on virtio-mmio (VirtIO 1.2 section 4.2, version 2): a
/// 4 KiB page of 32-bit registers with the device configuration at 0x100,
/// fixed at `base`, and one edge-triggered interrupt line whose causes the
/// driver reads in InterruptStatus and clears through InterruptACK.
///
/// Features, status and queue registers follow the same rules as on PCI
/// (`VirtioTransportCore`): VERSION_1 is required, queue fields are fixed
/// once a queue is ready or the driver is running, status 0 resets.
///
/// Threads: vCPU threads call the `BusDevice` methods; the device's worker
/// calls the `VirtioInterrupt` ones, which touch only atomics and the
/// interrupt line, never the registers lock, so `device.reset()` (which
/// joins the worker) may run under it.
public final class VirtioMMIOTransport: BusDevice, VirtioInterrupt {
    public let device: any VirtioDevice
    /// Where the register page is in guest-physical memory.
    public let base: UInt64
    let memory: GuestMemory
    let platform: any VirtioMMIOPlatform
    let interruptLine: any InterruptLine
    /// What a guest makes this device report: counted, and each kind
    /// logged at most once per interval (see `DeviceEventLog`).
    public let events: DeviceEventLog
    /// The features offered: the device's, plus VERSION_1; never RING_PACKED.
    public let offeredFeatures: UInt64

    struct Registers {
        var core: VirtioTransportCore
        /// Whether the running queues' notifiers are registered with the platform.
        var notifiersRegistered = false
        /// Set by `shutdown`: the device is never activated again.
        var detached = false
    }

    let registers: Mutex<Registers>
    /// InterruptStatus: used-buffer and configuration-change bits until acknowledged.
    let interruptStatus = Atomic<UInt32>(0)
    /// DEVICE_NEEDS_RESET, kept apart from the registers so that a device's
    /// worker can set it while a vCPU holds the registers lock.
    let needsReset = Atomic<Bool>(false)
    let configurationGeneration = Atomic<UInt32>(0)

    /// `interrupt` is the device's own line (an irqfd on its GSI in the VMM).
    public init(device: any VirtioDevice, base: UInt64, memory: GuestMemory, platform: any VirtioMMIOPlatform,
                interrupt: any InterruptLine, log: @escaping @Sendable (String) -> Void = DeviceLog.standardError,
                clock: @escaping @Sendable () -> UInt64 = DeviceEventLog.monotonicNanoseconds) {
        self.device = device
        self.base = base
        self.memory = memory
        self.platform = platform
        interruptLine = interrupt
        events = DeviceEventLog(clock: clock, log: log)
        let core = VirtioTransportCore(device: device)
        offeredFeatures = core.offeredFeatures
        registers = Mutex(Registers(core: core))
    }

    var name: String { "\(device.deviceType) at MMIO 0x\(String(base, radix: 16))" }

    /// For VM shutdown, once no vCPU runs: stops the device (its worker
    /// joined) and forgets the driver's setup for good. Idempotent.
    public func shutdown() {
        registers.withLock { registers in
            reset(&registers)
            registers.detached = true
        }
    }

    // MARK: BusDevice

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
        if offset >= VirtioMMIOLayout.configurationOffset {
            // Any width: the device's fields are 8, 16, 32 or 64 bits.
            device.readConfiguration(offset: offset - VirtioMMIOLayout.configurationOffset, into: data)
            return
        }
        guard data.count == VirtioMMIOLayout.registerAccessSize, offset % 4 == 0 else { return }
        let value = readRegister(offset)
        for index in data.indices { data[index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index))) }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        if offset >= VirtioMMIOLayout.configurationOffset {
            device.writeConfiguration(offset: offset - VirtioMMIOLayout.configurationOffset, from: data)
            return
        }
        guard data.count == VirtioMMIOLayout.registerAccessSize, offset % 4 == 0 else { return }
        writeRegister(offset, UInt32(truncatingIfNeeded: data.littleEndianValue))
    }

    private func readRegister(_ offset: UInt64) -> UInt32 {
        typealias R = VirtioMMIOLayout.Register
        switch offset {
        case R.magicValue: return VirtioMMIOLayout.magicValue
        case R.version: return VirtioMMIOLayout.version
        case R.deviceID: return UInt32(device.deviceType.rawValue)
        case R.vendorID: return VirtioMMIOLayout.vendorID
        case R.deviceFeatures: return registers.withLock { $0.core.deviceFeatureWord }
        case R.queueSizeMaximum: return registers.withLock { UInt32($0.core.selectedQueueMaximumSize) }
        case R.queueReady: return registers.withLock { $0.core.selectedQueue?.enabled == true ? 1 : 0 }
        case R.interruptStatus: return interruptStatus.load(ordering: .acquiring)
        case R.status: return UInt32(registers.withLock { status($0) })
        // No shared memory regions: a length of -1 says the selected one does not exist.
        case R.sharedMemoryLengthLow, R.sharedMemoryLengthHigh, R.sharedMemoryBaseLow, R.sharedMemoryBaseHigh: return 0xFFFF_FFFF
        case R.configurationGeneration: return configurationGeneration.load(ordering: .acquiring)
        default: return 0 // write-only registers and gaps
        }
    }

    private func writeRegister(_ offset: UInt64, _ value: UInt32) {
        typealias R = VirtioMMIOLayout.Register
        switch offset {
        case R.queueNotify:
            // A notification the ioeventfd did not catch (no ioeventfd, or
            // an index no queue has): pass it on the same way.
            let notifier = registers.withLock { $0.core.notifier(queue: UInt64(value)) }
            try? notifier?.signal()
        case R.interruptAcknowledge:
            interruptStatus.bitwiseAnd(~value, ordering: .acquiringAndReleasing)
        default:
            registers.withLock { registers in writeLockedRegister(offset, value, &registers) }
        }
    }

    private func writeLockedRegister(_ offset: UInt64, _ value: UInt32, _ registers: inout Registers) {
        typealias R = VirtioMMIOLayout.Register
        switch offset {
        case R.deviceFeaturesSelect: registers.core.deviceFeatureSelect = value
        case R.driverFeatures: registers.core.writeDriverFeatureWord(value)
        case R.driverFeaturesSelect: registers.core.driverFeatureSelect = value
        case R.queueSelect: registers.core.queueSelect = value
        case R.queueSize: registers.core.setSelectedQueueSize(UInt64(value))
        case R.queueReady:
            // 1 makes the queue ready; 0 takes it back before DRIVER_OK
            // (Linux does so when setting up its queues fails).
            guard value <= 1 else { return }
            registers.core.setSelectedQueueEnabled(value == 1)
        case R.status: writeStatus(UInt8(truncatingIfNeeded: value), &registers)
        case R.queueDescriptorLow, R.queueDescriptorHigh:
            writeAddressHalf(.descriptorTable, high: offset == R.queueDescriptorHigh, value, &registers)
        case R.queueDriverLow, R.queueDriverHigh:
            writeAddressHalf(.driverArea, high: offset == R.queueDriverHigh, value, &registers)
        case R.queueDeviceLow, R.queueDeviceHigh:
            writeAddressHalf(.deviceArea, high: offset == R.queueDeviceHigh, value, &registers)
        default:
            return // read-only registers, SHMSel (no regions), QueueReset (not offered), gaps
        }
    }

    /// Replaces one 32-bit half of a queue address, keeping the other.
    private func writeAddressHalf(_ area: VirtioQueueArea, high: Bool, _ value: UInt32, _ registers: inout Registers) {
        guard let queue = registers.core.selectedQueue else { return }
        let old: UInt64
        switch area {
        case .descriptorTable: old = queue.descriptorTable
        case .driverArea: old = queue.driverArea
        case .deviceArea: old = queue.deviceArea
        }
        let new = high ? (old & 0xFFFF_FFFF) | UInt64(value) << 32 : (old & ~0xFFFF_FFFF) | UInt64(value)
        registers.core.setSelectedQueueAddress(area, new)
    }

    private func status(_ registers: Registers) -> UInt8 {
        registers.core.status | (needsReset.load(ordering: .acquiring) ? VirtioStatus.deviceNeedsReset : 0)
    }

    // MARK: Status

    private func writeStatus(_ value: UInt8, _ registers: inout Registers) {
        switch registers.core.writeStatus(value, name: name, report: events.record) {
        case .reset: reset(&registers)
        case .activate: activate(&registers)
        case .none: return
        }
    }

    /// DRIVER_OK: validate every ready queue, give each a notifier on
    /// QueueNotify matching its index, and start the device.
    private func activate(_ registers: inout Registers) {
        guard !registers.detached else { return }
        let activation: VirtioActivation
        do {
            activation = try registers.core.startQueues(memory: memory, interrupt: self)
        } catch {
            markNeedsReset(.driverOKRefused, "\(error)")
            return
        }
        registerNotifiers(&registers)
        do {
            try device.activate(activation)
        } catch {
            reportDeviceError("\(error)")
        }
    }

    /// Status 0: the device stops (its worker joined), and every register
    /// returns to its initial value (4.2.2.1), InterruptStatus included.
    private func reset(_ registers: inout Registers) {
        device.reset()
        unregisterNotifiers(&registers)
        registers.core.reset()
        interruptStatus.store(0, ordering: .releasing)
        needsReset.store(false, ordering: .releasing)
    }

    func registerNotifiers(_ registers: inout Registers) {
        guard !registers.notifiersRegistered else { return }
        let address = base + VirtioMMIOLayout.Register.queueNotify
        for (index, notifier) in registers.core.notifiers.enumerated() {
            guard let notifier else { continue }
            do {
                try platform.registerNotifier(notifier, address: address, queue: UInt32(index))
            } catch {
                // Notifications still arrive, through a VM exit (see `writeRegister`).
                events.record(.notifierFailure, "\(name): queue \(index) notifications go through user space: \(error)")
            }
        }
        registers.notifiersRegistered = true
    }

    private func unregisterNotifiers(_ registers: inout Registers) {
        guard registers.notifiersRegistered else { return }
        let address = base + VirtioMMIOLayout.Register.queueNotify
        for (index, notifier) in registers.core.notifiers.enumerated() {
            guard let notifier else { continue }
            platform.unregisterNotifier(notifier, address: address, queue: UInt32(index))
        }
        registers.notifiersRegistered = false
    }


    // MARK: VirtioInterrupt

    public func signalUsedBuffers(queue index: Int) {
        raise(VirtioMMIOLayout.interruptUsedBuffer)
    }

    public func signalConfigurationChange() {
        configurationGeneration.wrappingAdd(1, ordering: .releasing)
        raise(VirtioMMIOLayout.interruptConfigurationChange)
    }

    public func reportDeviceError(_ message: String) {
        markNeedsReset(.deviceError, message)
    }

    /// Sets DEVICE_NEEDS_RESET (once until reset), counts and logs why, and
    /// tells the driver.
    private func markNeedsReset(_ kind: DeviceEventKind, _ message: String) {
        guard needsReset.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        events.record(kind, "\(name): device needs reset: \(message)")
        signalConfigurationChange()
    }

    /// Sets the cause, then pulses the line: the status the driver reads in
    /// its handler is always at least what caused the edge.
    private func raise(_ cause: UInt32) {
        interruptStatus.bitwiseOr(cause, ordering: .acquiringAndReleasing)
        interruptLine.trigger()
        device.counters.interrupts.wrappingAdd(1, ordering: .relaxed)
    }

    // MARK: Inspection (tests, reports)

    /// The device status as the driver reads it.
    public var deviceStatus: UInt8 { registers.withLock { status($0) } }
    public var isActive: Bool { registers.withLock { $0.core.active } }
    /// The pending InterruptStatus bits.
    public var pendingInterrupts: UInt32 { interruptStatus.load(ordering: .acquiring) }
}
