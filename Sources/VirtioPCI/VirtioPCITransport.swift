import Devices
import GuestMemory
import HostSystem
import PCI
import Synchronization
import Virtio

/// One VirtIO device on PCI through the modern interface (VirtIO 1.2
/// section 4.1): its configuration space with the virtio vendor
/// capabilities and MSI-X, the BAR 0 registers (common configuration, ISR,
/// device configuration, notifications, MSI-X table), feature negotiation,
/// the status state machine, and the interrupts the device raises.
///
/// Threads: vCPU threads call the `PCIFunction` and `BusDevice` methods; the
/// device's worker calls the `VirtioInterrupt` ones. Locks are taken in the
/// order registers -> interrupts -> MSI-X table, and the interrupt path never
/// takes the registers lock, so `device.reset()` (which joins the worker)
/// may run under it.
public final class VirtioPCITransport: PCIFunction, BusDevice, VirtioInterrupt {
    public let device: any VirtioDevice
    public let address: PCIAddress
    let memory: GuestMemory
    let platform: any PCIPlatform
    let msix: MSIXTable
    let intx: any LevelInterruptLine
    /// What a guest makes this device report: counted, and each kind
    /// logged at most once per interval (see `DeviceEventLog`).
    public let events: DeviceEventLog
    /// The features offered: the device's, plus VERSION_1; never RING_PACKED.
    public let offeredFeatures: UInt64
    /// Configuration-space offsets of the MSI-X capability and of the PCI
    /// configuration access capability.
    let msixCapability: Int
    let pciConfigurationCapability: Int

    struct Registers {
        var configuration: PCIConfigurationSpace
        /// Features, status and queues: the part virtio-mmio shares.
        var core: VirtioTransportCore
        /// Where BAR 0 is on the MMIO bus, and where the notifiers are registered.
        var mappedBAR: UInt64?
        var notifierBase: UInt64?
        /// Set by `shutdown`: the BAR is never mapped again.
        var detached = false
    }

    struct Interrupts {
        var configurationVector = VirtioPCILayout.noVector
        var queueVectors: [UInt16]
        var isr: UInt8 = 0
        var intxDisabled = false
    }

    let registers: Mutex<Registers>
    let interrupts: Mutex<Interrupts>
    /// DEVICE_NEEDS_RESET, kept apart from the registers so that a device's
    /// worker can set it while a vCPU holds the registers lock.
    let needsReset = Atomic<Bool>(false)
    let configurationGeneration = Atomic<UInt8>(0)

    /// Builds the function with BAR 0 at `barAddress` (in the 32-bit window:
    /// aligned to `VirtioPCILayout.barSize`) and maps it. `msixVectors` must
    /// hold one vector per queue plus one for configuration changes (fewer
    /// work: the driver then shares them).
    public init(device: any VirtioDevice, address: PCIAddress, barAddress: UInt64, memory: GuestMemory,
                platform: any PCIPlatform, msixVectors: [MSIVector], router: any MSIRouter,
                intx: any LevelInterruptLine, log: @escaping @Sendable (String) -> Void = DeviceLog.standardError,
                clock: @escaping @Sendable () -> UInt64 = DeviceEventLog.monotonicNanoseconds) throws(PCIError) {
        let name = "\(device.deviceType) at PCI \(address)"
        let queueCount = device.queueMaximumSizes.count
        guard queueCount <= VirtioPCILayout.maximumQueues, msixVectors.count <= VirtioPCILayout.maximumVectors else {
            throw .host(step: name, message: "\(queueCount) queues and \(msixVectors.count) vectors exceed the transport's \(VirtioPCILayout.maximumQueues) and \(VirtioPCILayout.maximumVectors)")
        }
        self.device = device
        self.address = address
        self.memory = memory
        self.platform = platform
        self.intx = intx
        events = DeviceEventLog(clock: clock, log: log)
        let core = VirtioTransportCore(device: device)
        offeredFeatures = core.offeredFeatures
        msix = MSIXTable(vectors: msixVectors, router: router)

        var space = PCIConfigurationSpace(
            vendorID: VirtioPCILayout.vendorID, deviceID: VirtioPCILayout.deviceIDBase + device.deviceType.rawValue,
            classCode: VirtioPCILayout.classCode(for: device.deviceType), revisionID: VirtioPCILayout.revisionID,
            subsystemVendorID: VirtioPCILayout.vendorID, subsystemID: VirtioPCILayout.subsystemID, interruptPin: 1)
        var msixOffset = 0, accessOffset = 0
        do {
            try space.addBAR(VirtioPCILayout.bar, PCIBARDefinition(size: VirtioPCILayout.barSize), address: barAddress)
            for (type, offset, length) in [
                (VirtioPCILayout.CapabilityType.common, VirtioPCILayout.commonOffset, VirtioPCILayout.commonLength),
                (.isr, VirtioPCILayout.isrOffset, 1),
                (.device, VirtioPCILayout.deviceConfigurationOffset, VirtioPCILayout.deviceConfigurationLength),
            ] {
                try space.addCapability(id: PCICapabilityID.vendorSpecific, body: Self.virtioCapability(type, offset: offset, length: length))
            }
            try space.addCapability(id: PCICapabilityID.vendorSpecific, body: Self.virtioCapability(
                .notify, offset: VirtioPCILayout.notifyOffset, length: UInt64(max(queueCount, 1)) * VirtioPCILayout.notifyOffsetMultiplier,
                extra: UInt32(VirtioPCILayout.notifyOffsetMultiplier)))
            // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and the data window are the driver's to write.
            let accessBody = Self.virtioCapability(.pciConfiguration, offset: 0, length: 0, extra: 0)
            var accessMask = [UInt8](repeating: 0, count: accessBody.count)
            for index in [2] + Array(6..<18) { accessMask[index] = 0xFF }
            accessOffset = try space.addCapability(id: PCICapabilityID.vendorSpecific, body: accessBody, writableMask: accessMask)
            if !msixVectors.isEmpty {
                let (body, mask) = MSIXTable.capability(
                    vectorCount: msixVectors.count, tableBAR: VirtioPCILayout.bar, tableOffset: UInt32(VirtioPCILayout.msixTableOffset),
                    pbaBAR: VirtioPCILayout.bar, pbaOffset: UInt32(VirtioPCILayout.msixPBAOffset))
                msixOffset = try space.addCapability(id: PCICapabilityID.msix, body: body, writableMask: mask)
            }
        } catch {
            throw .configuration(device: name, error)
        }
        // Firmware leaves memory decoding on, as a BIOS does for devices it placed.
        space.setValue(UInt32(PCICommand.memorySpace), offset: PCIRegister.command, size: 2)
        msixCapability = msixOffset
        pciConfigurationCapability = accessOffset
        registers = Mutex(Registers(configuration: space, core: core))
        interrupts = Mutex(Interrupts(queueVectors: Array(repeating: VirtioPCILayout.noVector, count: queueCount)))
        registers.withLock { updateBARMapping(&$0) }
    }

    /// struct virtio_pci_cap after its ID and next pointer (plus the
    /// notify multiplier or PCI-access data word when `extra` is given).
    static func virtioCapability(_ type: VirtioPCILayout.CapabilityType, offset: UInt64, length: UInt64, extra: UInt32? = nil) -> [UInt8] {
        func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
        let capabilityLength: UInt8 = extra == nil ? 16 : 20
        return [capabilityLength, type.rawValue, UInt8(VirtioPCILayout.bar), 0, 0, 0]
            + le32(UInt32(offset)) + le32(UInt32(length)) + (extra.map(le32) ?? [])
    }

    var name: String { "\(device.deviceType) at PCI \(address)" }

    /// For VM shutdown, once no vCPU runs: stops the device (its worker
    /// joined), forgets the driver's setup, and takes BAR 0 off the bus for
    /// good (the bus holding the function is what keeps it, its memory and
    /// its VM alive). Idempotent.
    public func shutdown() {
        registers.withLock { registers in
            reset(&registers)
            if let old = registers.mappedBAR { platform.unmapBAR(self, base: old) }
            registers.mappedBAR = nil
            registers.detached = true
        }
    }

    // MARK: PCIFunction

    public func readConfiguration(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        let access: (offset: UInt64, length: Int)? = registers.withLock { registers in
            registers.configuration.read(offset: offset, into: data)
            return pciConfigurationAccess(registers, overlapping: offset, count: data.count)
        }
        // VIRTIO_PCI_CAP_PCI_CFG: reading the data window reads the BAR.
        guard let access else { return }
        var window = [UInt8](repeating: 0, count: 4)
        window.withUnsafeMutableBytes { raw in
            read(offset: access.offset, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<access.length]))
        }
        copyWindow(window, into: data, accessOffset: offset)
    }

    public func writeConfiguration(offset: Int, from data: UnsafeRawBufferPointer) {
        let access: (offset: UInt64, length: Int, bytes: [UInt8])? = registers.withLock { registers in
            registers.configuration.write(offset: offset, from: data)
            applyConfigurationSideEffects(&registers)
            guard let access = pciConfigurationAccess(registers, overlapping: offset, count: data.count) else { return nil }
            var window = [UInt8](repeating: 0, count: 4)
            window.withUnsafeMutableBytes { registers.configuration.read(offset: pciConfigurationCapability + 16, into: $0) }
            return (access.offset, access.length, window)
        }
        guard let access else { return }
        access.bytes.withUnsafeBytes { raw in
            write(offset: access.offset, from: UnsafeRawBufferPointer(rebasing: raw[0..<access.length]))
        }
    }

    /// The BAR access a configuration access to the PCI-access capability's
    /// data window stands for: BAR 0 only, 1, 2 or 4 bytes, inside the BAR.
    private func pciConfigurationAccess(_ registers: Registers, overlapping offset: Int, count: Int) -> (offset: UInt64, length: Int)? {
        let window = pciConfigurationCapability + 16
        guard pciConfigurationCapability != 0, offset < window + 4, offset + count > window else { return nil }
        let space = registers.configuration
        let bar = space.value(offset: pciConfigurationCapability + 4, size: 1)
        let barOffset = UInt64(space.value(offset: pciConfigurationCapability + 8, size: 4))
        let length = Int(space.value(offset: pciConfigurationCapability + 12, size: 4))
        guard bar == UInt32(VirtioPCILayout.bar), [1, 2, 4].contains(length),
              barOffset + UInt64(length) <= VirtioPCILayout.barSize else { return nil }
        return (barOffset, length)
    }

    private func copyWindow(_ window: [UInt8], into data: UnsafeMutableRawBufferPointer, accessOffset: Int) {
        let windowStart = pciConfigurationCapability + 16
        for index in data.indices {
            let position = accessOffset + index - windowStart
            if position >= 0 && position < 4 { data[index] = window[position] }
        }
    }

    /// After a configuration write: BAR placement, MSI-X control, INTx disable.
    func applyConfigurationSideEffects(_ registers: inout Registers) {
        updateBARMapping(&registers)
        if msixCapability != 0 {
            msix.setControl(UInt16(registers.configuration.value(offset: msixCapability + 2, size: 2)))
        }
        let disabled = registers.configuration.interruptDisabled
        interrupts.withLock { interrupts in
            interrupts.intxDisabled = disabled
            updateINTx(interrupts)
        }
    }

    /// Puts BAR 0 where the configuration space says it decodes (nowhere
    /// while memory decoding is off), and moves the notifiers with it.
    func updateBARMapping(_ registers: inout Registers) {
        let wanted = registers.detached ? nil : registers.configuration.decodedBAR(VirtioPCILayout.bar)?.base
        guard wanted != registers.mappedBAR else { return }
        unregisterNotifiers(&registers)
        if let old = registers.mappedBAR { platform.unmapBAR(self, base: old) }
        registers.mappedBAR = nil
        if let wanted, platform.mapBAR(self, base: wanted, size: VirtioPCILayout.barSize) {
            registers.mappedBAR = wanted
        }
        registerNotifiers(&registers)
    }

    func registerNotifiers(_ registers: inout Registers) {
        guard registers.core.active, registers.notifierBase == nil, let base = registers.mappedBAR else { return }
        for (index, notifier) in registers.core.notifiers.enumerated() {
            guard let notifier else { continue }
            do {
                try platform.registerNotifier(notifier, address: notifyAddress(base: base, queue: index), length: VirtioPCILayout.notifyWriteLength)
            } catch {
                // Notifications still arrive, through a VM exit (see `write`).
                events.record(.notifierFailure, "\(name): queue \(index) notifications go through user space: \(error)")
            }
        }
        registers.notifierBase = base
    }

    private func unregisterNotifiers(_ registers: inout Registers) {
        guard let base = registers.notifierBase else { return }
        for (index, notifier) in registers.core.notifiers.enumerated() {
            guard let notifier else { continue }
            platform.unregisterNotifier(notifier, address: notifyAddress(base: base, queue: index), length: VirtioPCILayout.notifyWriteLength)
        }
        registers.notifierBase = nil
    }

    private func notifyAddress(base: UInt64, queue: Int) -> UInt64 {
        base + VirtioPCILayout.notifyOffset + UInt64(queue) * VirtioPCILayout.notifyOffsetMultiplier
    }

    // MARK: BusDevice (BAR 0)

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
        switch offset {
        case VirtioPCILayout.commonOffset..<VirtioPCILayout.isrOffset:
            readCommon(offset: Int(offset - VirtioPCILayout.commonOffset), into: data)
        case VirtioPCILayout.isrOffset..<VirtioPCILayout.deviceConfigurationOffset:
            // Reading the ISR clears it and lowers INTx (4.1.4.5).
            guard offset == VirtioPCILayout.isrOffset else { return }
            let value = interrupts.withLock { interrupts in
                defer {
                    interrupts.isr = 0
                    updateINTx(interrupts)
                }
                return interrupts.isr
            }
            if !data.isEmpty { data[0] = value }
        case VirtioPCILayout.deviceConfigurationOffset..<VirtioPCILayout.notifyOffset:
            device.readConfiguration(offset: offset - VirtioPCILayout.deviceConfigurationOffset, into: data)
        case VirtioPCILayout.msixTableOffset..<VirtioPCILayout.msixPBAOffset:
            msix.readTable(offset: offset - VirtioPCILayout.msixTableOffset, into: data)
        case VirtioPCILayout.msixPBAOffset..<VirtioPCILayout.barSize:
            msix.readPendingBits(offset: offset - VirtioPCILayout.msixPBAOffset, into: data)
        default:
            return
        }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        switch offset {
        case VirtioPCILayout.commonOffset..<VirtioPCILayout.isrOffset:
            writeCommon(offset: Int(offset - VirtioPCILayout.commonOffset), from: data)
        case VirtioPCILayout.deviceConfigurationOffset..<VirtioPCILayout.notifyOffset:
            device.writeConfiguration(offset: offset - VirtioPCILayout.deviceConfigurationOffset, from: data)
        case VirtioPCILayout.notifyOffset..<(VirtioPCILayout.notifyOffset + VirtioPCILayout.notifyLength):
            // A notification the ioeventfd did not catch (another width, or
            // no ioeventfd): pass it on the same way.
            let queue = (offset - VirtioPCILayout.notifyOffset) / VirtioPCILayout.notifyOffsetMultiplier
            let notifier = registers.withLock { $0.core.notifier(queue: queue) }
            try? notifier?.signal()
        case VirtioPCILayout.msixTableOffset..<VirtioPCILayout.msixPBAOffset:
            msix.writeTable(offset: offset - VirtioPCILayout.msixTableOffset, from: data)
        default:
            return // ISR, PBA and the gaps are read-only
        }
    }

    // MARK: Common configuration

    private func readCommon(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        guard offset < Int(VirtioPCILayout.commonLength) else { return }
        var bytes = [UInt8](repeating: 0, count: Int(VirtioPCILayout.commonLength))
        registers.withLock { registers in
            let vectors = interrupts.withLock { ($0.configurationVector, $0.queueVectors) }
            func put(_ value: UInt64, _ field: Int, _ width: Int) {
                for index in 0..<width { bytes[field + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
            }
            typealias C = VirtioPCILayout.Common
            let core = registers.core
            put(UInt64(core.deviceFeatureSelect), C.deviceFeatureSelect, 4)
            put(UInt64(core.deviceFeatureWord), C.deviceFeature, 4)
            put(UInt64(core.driverFeatureSelect), C.driverFeatureSelect, 4)
            put(UInt64(core.driverFeatureWord), C.driverFeature, 4)
            put(UInt64(vectors.0), C.configMSIXVector, 2)
            put(UInt64(core.queues.count), C.numberOfQueues, 2)
            put(UInt64(status(registers)), C.deviceStatus, 1)
            put(UInt64(configurationGeneration.load(ordering: .relaxed)), C.configGeneration, 1)
            put(UInt64(core.queueSelect), C.queueSelect, 2)
            if let queue = core.selectedQueue {
                let selected = Int(core.queueSelect)
                put(UInt64(queue.size), C.queueSize, 2)
                put(UInt64(vectors.1[selected]), C.queueMSIXVector, 2)
                put(queue.enabled ? 1 : 0, C.queueEnable, 2)
                put(UInt64(selected), C.queueNotifyOffset, 2)
                put(queue.descriptorTable, C.queueDescriptor, 8)
                put(queue.driverArea, C.queueDriver, 8)
                put(queue.deviceArea, C.queueDevice, 8)
            } else {
                // An absent queue reads as size 0 (4.1.4.3.2); its vector as none.
                put(UInt64(VirtioPCILayout.noVector), C.queueMSIXVector, 2)
            }
        }
        for index in data.indices where offset + index < bytes.count { data[index] = bytes[offset + index] }
    }

    private func status(_ registers: Registers) -> UInt8 {
        registers.core.status | (needsReset.load(ordering: .acquiring) ? VirtioStatus.deviceNeedsReset : 0)
    }

    /// Splits the write into the fields it covers; each field gets its old
    /// value with the written bytes replaced.
    private func writeCommon(offset: Int, from data: UnsafeRawBufferPointer) {
        registers.withLock { registers in
            let oldBytes = commonSnapshot(registers)
            for field in VirtioPCILayout.Common.fields {
                let start = max(offset, field.offset), end = min(offset + data.count, field.offset + field.width)
                guard start < end else { continue }
                var value: UInt64 = 0
                for index in 0..<field.width {
                    let position = field.offset + index
                    let byte = (position >= start && position < end) ? data[position - offset] : oldBytes[position]
                    value |= UInt64(byte) << (8 * UInt64(index))
                }
                writeCommonField(field.offset, value, &registers)
            }
        }
    }

    /// The fields whose old value a partial write keeps (the writable ones).
    private func commonSnapshot(_ registers: Registers) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(VirtioPCILayout.commonLength))
        func put(_ value: UInt64, _ field: Int, _ width: Int) {
            for index in 0..<width { bytes[field + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
        }
        typealias C = VirtioPCILayout.Common
        let vectors = interrupts.withLock { ($0.configurationVector, $0.queueVectors) }
        let core = registers.core
        put(UInt64(core.deviceFeatureSelect), C.deviceFeatureSelect, 4)
        put(UInt64(core.driverFeatureSelect), C.driverFeatureSelect, 4)
        put(UInt64(core.driverFeatureWord), C.driverFeature, 4)
        put(UInt64(vectors.0), C.configMSIXVector, 2)
        put(UInt64(core.status), C.deviceStatus, 1)
        put(UInt64(core.queueSelect), C.queueSelect, 2)
        if let queue = core.selectedQueue {
            put(UInt64(queue.size), C.queueSize, 2)
            put(UInt64(vectors.1[Int(core.queueSelect)]), C.queueMSIXVector, 2)
            put(queue.descriptorTable, C.queueDescriptor, 8)
            put(queue.driverArea, C.queueDriver, 8)
            put(queue.deviceArea, C.queueDevice, 8)
        }
        return bytes
    }

    private func writeCommonField(_ field: Int, _ value: UInt64, _ registers: inout Registers) {
        typealias C = VirtioPCILayout.Common
        let selected = Int(registers.core.queueSelect)
        let queueExists = registers.core.selectedQueue != nil
        switch field {
        case C.deviceFeatureSelect:
            registers.core.deviceFeatureSelect = UInt32(truncatingIfNeeded: value)
        case C.driverFeatureSelect:
            registers.core.driverFeatureSelect = UInt32(truncatingIfNeeded: value)
        case C.driverFeature:
            registers.core.writeDriverFeatureWord(UInt32(truncatingIfNeeded: value))
        case C.configMSIXVector:
            let vector = validVector(value)
            interrupts.withLock { $0.configurationVector = vector }
        case C.deviceStatus:
            writeStatus(UInt8(truncatingIfNeeded: value), &registers)
        case C.queueSelect:
            registers.core.queueSelect = UInt32(UInt16(truncatingIfNeeded: value))
        case C.queueSize:
            registers.core.setSelectedQueueSize(value)
        case C.queueMSIXVector:
            guard queueExists else { return }
            let vector = validVector(value)
            interrupts.withLock { $0.queueVectors[selected] = vector }
        case C.queueEnable:
            // Only 1 may be written (4.1.4.3.2); a queue is disabled by reset.
            guard value == 1, registers.core.selectedQueueWritable else { return }
            registers.core.setSelectedQueueEnabled(true)
        case C.queueDescriptor:
            registers.core.setSelectedQueueAddress(.descriptorTable, value)
        case C.queueDriver:
            registers.core.setSelectedQueueAddress(.driverArea, value)
        case C.queueDevice:
            registers.core.setSelectedQueueAddress(.deviceArea, value)
        default:
            return // read-only fields
        }
    }

    /// A vector the table has, else VIRTIO_MSI_NO_VECTOR (which the driver
    /// reads back to learn the mapping failed).
    private func validVector(_ value: UInt64) -> UInt16 {
        value < UInt64(msix.vectorCount) ? UInt16(value) : VirtioPCILayout.noVector
    }

    // MARK: Status

    private func writeStatus(_ value: UInt8, _ registers: inout Registers) {
        switch registers.core.writeStatus(value, name: name, report: events.record) {
        case .reset: reset(&registers)
        case .activate: activate(&registers)
        case .none: return
        }
    }

    /// DRIVER_OK: validate every enabled queue, give each a notification
    /// eventfd on its doorbell, and start the device.
    private func activate(_ registers: inout Registers) {
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

    /// Device status 0: the device stops (its worker joined), and every
    /// register returns to its initial value (4.1.4.3.1).
    private func reset(_ registers: inout Registers) {
        device.reset()
        unregisterNotifiers(&registers)
        registers.core.reset()
        interrupts.withLock { interrupts in
            interrupts.configurationVector = VirtioPCILayout.noVector
            for index in interrupts.queueVectors.indices { interrupts.queueVectors[index] = VirtioPCILayout.noVector }
            interrupts.isr = 0
            updateINTx(interrupts)
        }
        needsReset.store(false, ordering: .releasing)
    }


    // MARK: VirtioInterrupt

    public func signalUsedBuffers(queue index: Int) {
        interrupts.withLock { interrupts in
            let vector = index >= 0 && index < interrupts.queueVectors.count ? interrupts.queueVectors[index] : VirtioPCILayout.noVector
            raise(vector: vector, isrBit: VirtioPCILayout.isrQueue, &interrupts)
        }
    }

    public func signalConfigurationChange() {
        configurationGeneration.wrappingAdd(1, ordering: .relaxed)
        interrupts.withLock { interrupts in
            raise(vector: interrupts.configurationVector, isrBit: VirtioPCILayout.isrConfiguration, &interrupts)
        }
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

    /// MSI-X when the driver enabled it, else the ISR bit and INTx.
    private func raise(vector: UInt16, isrBit: UInt8, _ interrupts: inout Interrupts) {
        switch msix.signal(Int(vector)) {
        case .disabled:
            interrupts.isr |= isrBit
            updateINTx(interrupts)
            device.counters.interrupts.wrappingAdd(1, ordering: .relaxed)
        case .delivered, .pending:
            // A masked vector's interrupt is sent when the driver unmasks it.
            device.counters.interrupts.wrappingAdd(1, ordering: .relaxed)
        case .noVector:
            return
        }
    }

    /// INTx is a level: high while the ISR has a bit set and the command
    /// register allows it.
    func updateINTx(_ interrupts: Interrupts) {
        intx.setLevel(interrupts.isr != 0 && !interrupts.intxDisabled)
    }

    // MARK: Inspection (tests, reports)

    /// The device status as the driver reads it.
    public var deviceStatus: UInt8 { registers.withLock { status($0) } }
    /// Where BAR 0 decodes now, if anywhere.
    public var mappedBARAddress: UInt64? { registers.withLock { $0.mappedBAR } }
    public var isActive: Bool { registers.withLock { $0.core.active } }
}
