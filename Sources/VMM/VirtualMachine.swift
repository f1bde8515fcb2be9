import ArchX86
import Devices
import Glibc
import GuestMemory
import HostSystem
import KVM
import SnapshotFormat
import Synchronization
import Virtio
import VirtioConsole

/// One running guest: KVM VM, guest RAM, devices and one thread per vCPU.
/// Build it with `init`, then call `run()` once from the main thread.
public final class VirtualMachine: Sendable {
    /// The signal that interrupts a vCPU thread's KVM_RUN.
    static let kickSignal = SIGUSR1

    public let configuration: VMConfiguration
    let system: KVMSystem
    let handle: VirtualMachineHandle
    let memory: GuestMemory
    let vcpus: [VCPUHandle]
    let portBus = Bus()
    let mmioBus = Bus()
    let serial: Serial8250
    let serialOutput: any SerialOutput
    /// Set once by whoever ends the run first; later requests are ignored.
    let exitReason = Mutex<VMExitReason?>(nil)
    /// Signalled when `exitReason` is set, to wake the event loop.
    let stopEvent: EventFD
    let stopping = Atomic<Bool>(false)
    /// PCI bus 0 and the virtio devices on it (`transport` pci).
    let pci: PCISetup?
    /// The virtio-mmio devices (`transport` mmio).
    let mmio: MMIOSetup?
    /// Every virtio device, in creation order (runtime updates find them here).
    let virtioDevices: [any VirtioDevice]
    /// Parks the vCPUs while the control API has the VM paused.
    let pauseGate = VCPUPauseGate()
    /// The virtio devices are held for a snapshot (until `resume`).
    let devicesHeld = Mutex(false)
    /// Exit counters, one object per vCPU (index = vCPU id).
    let exitCounters: [VCPUExitCounters]
    /// One per vCPU with `--trace-exits`, else empty (the vCPU loop checks once per exit).
    let exitTraces: [ExitTrace]
    /// When the last run started and stopped, for the exit trace's phases.
    let traceWindow = Mutex<(UInt64, UInt64)?>(nil)
    /// Raises the ACPI Generic Event Device's interrupt: the power button.
    let powerButton: EventFDInterruptLine
    /// Counts COM1 output for the metrics.
    let serialCounter: CountingSerialOutput
    /// The bounded buffer and `serial-out` thread in front of a stdout or
    /// file console (nil for `none` and for an output a caller passed).
    let serialBuffer: BufferedSerialOutput?
    /// The virtio-console with `--console virtio`: it gets the typed input.
    let virtioConsole: ConsoleDevice?
    /// When `run()` started (CLOCK_MONOTONIC ns; 0 before) and pause accounting.
    let timing = Mutex(RunTiming())
    /// The running vCPU threads, for kicks (empty outside `run()`).
    let vcpuThreads = Mutex<[HostThread]>([])
    /// Firecracker's boot-timer device (`--boot-timer`), timing from this VM's build.
    public let bootTimer: BootTimer?

    /// Where a VM's guest starts: a kernel it boots, or a saved machine.
    enum Start {
        case boot
        /// Guest RAM, KVM state and the devices' sections saved from a
        /// paused VM of the same configuration.
        case restore(MachineKVMState, RestoredMemory, deviceSections: [SnapshotSection])
    }

    /// Where a restored VM's RAM comes from.
    enum RestoredMemory {
        /// Copied into fresh anonymous memory (tests, `copyGuestMemory`).
        case image(GuestMemoryImage)
        /// A snapshot's memory file mapped MAP_PRIVATE: pages are read when
        /// the guest touches them, and its writes stay in this process.
        case mapped(GuestMemory)
    }

    /// Builds the VM: memory, irqchip, devices, kernel, ACPI tables, vCPUs.
    /// `serialOutput` overrides where COM1 writes go (tests capture it).
    public convenience init(configuration: VMConfiguration, serialOutput: (any SerialOutput)? = nil) throws(VMMError) {
        try self.init(configuration: configuration, start: .boot, serialOutput: serialOutput)
    }

    /// Builds the VM as `init(configuration:)` does, but instead of loading a
    /// kernel fills guest RAM from `memoryImage` and KVM (irqchips, PIT,
    /// clock, every vCPU) from `state`, so `run()` resumes the guest where it
    /// was captured. The configuration must match the captured VM's (vCPU
    /// count and memory size are checked); `deviceSections` (from
    /// `captureDeviceSections()`) put the devices back as they were.
    public convenience init(configuration: VMConfiguration, restoring state: MachineKVMState, memoryImage: GuestMemoryImage,
                            deviceSections: [SnapshotSection] = [], serialOutput: (any SerialOutput)? = nil) throws(VMMError) {
        try self.init(configuration: configuration, start: .restore(state, .image(memoryImage), deviceSections: deviceSections),
                      serialOutput: serialOutput)
    }

    init(configuration: VMConfiguration, start: Start, serialOutput: (any SerialOutput)?) throws(VMMError) {
        self.configuration = configuration
        bootTimer = configuration.bootTimer ? BootTimer() : nil
        do {
            system = try KVMSystem(path: configuration.kvmDevicePath)
        } catch {
            throw .kvm(error)
        }
        try configuration.validate(maxVCPUs: system.maxVCPUs)

        // Read the images (or check the saved machine) first: a bad path
        // should fail before any allocation.
        let images: (kernel: [UInt8], initrd: [UInt8]?)?
        switch start {
        case .boot:
            let kernelImage = try Self.readFile(role: "kernel", path: configuration.kernelPath, maximumSize: VMConfiguration.maximumKernelSize)
            let initrdImage = try configuration.initrdPath.map { (path) throws(VMMError) in
                try Self.readFile(role: "initrd", path: path, maximumSize: min(VMConfiguration.maximumInitrdSize, configuration.memorySize))
            }
            images = (kernelImage, initrdImage)
        case let .restore(state, restored, _):
            try Self.checkRestorable(state, restored.layout, configuration: configuration)
            images = nil
        }

        do {
            handle = try system.createVM()
            try handle.setIdentityMapAddress(Layout.kvmIdentityMapStart.rawValue)
            try handle.setTSSAddress(Layout.kvmTSSStart.rawValue)
            try handle.createInterruptController()
            try handle.createPIT()
        } catch {
            throw .kvm(error)
        }

        if case let .restore(_, .mapped(mapped), _) = start {
            memory = mapped
        } else {
            let ramRanges = MemoryPlan.ramRanges(memorySize: configuration.memorySize)
            do {
                memory = try GuestMemory(ranges: ramRanges, trackingDirtyPages: configuration.trackDirtyPages)
            } catch {
                throw .memory(step: "allocating \(MemorySize.format(configuration.memorySize)) of guest RAM", cause: error)
            }
        }
        if configuration.transparentHugePages { memory.adviseTransparentHugePages() }
        for (slot, region) in memory.regions.enumerated() {
            do {
                try handle.setUserMemoryRegion(slot: UInt32(slot), guestAddress: region.start.rawValue, size: region.size,
                                               hostAddress: region.hostAddress, logDirtyPages: configuration.trackDirtyPages)
            } catch {
                throw .kvm(error)
            }
        }

        do {
            stopEvent = try EventFD()
        } catch {
            throw .host(step: "creating the stop eventfd", cause: error)
        }

        // COM1, its interrupt through an irqfd so raising it costs one write.
        let output: any SerialOutput
        if let serialOutput {
            output = serialOutput
        } else {
            output = try Self.makeSerialOutput(configuration.serial)
        }
        self.serialOutput = output
        serialBuffer = output as? BufferedSerialOutput
        serialCounter = CountingSerialOutput(output)
        let serialInterrupt: EventFDInterruptLine
        do {
            serialInterrupt = try EventFDInterruptLine(vm: handle, gsi: Layout.com1IRQ)
            powerButton = try EventFDInterruptLine(vm: handle, gsi: Layout.acpiGEDInterrupt)
        } catch {
            throw .kvm(error)
        }
        serial = Serial8250(output: serialCounter, interrupt: serialInterrupt)

        // The virtio devices, on PCI (host bridge, configuration access) or on virtio-mmio.
        let devices = try VirtioDeviceFactory.makeDevices(configuration, consoleOutput: serialCounter)
        virtioConsole = devices.lazy.compactMap { $0 as? ConsoleDevice }.first
        virtioDevices = devices
        switch configuration.transport {
        case .pci where devices.isEmpty:
            // Nothing to put on it: no PCI bus, as Firecracker and QEMU's
            // microvm. A guest's PCI scan runs in the guest kernel, which
            // hosts that emulate CPL0 (docs/performance.md) run thousands of
            // times slower: 8,287 configuration exits and about 8 s of a
            // 15 s Linux boot here.
            pci = nil
            mmio = nil
        case .pci:
            pci = try PCISetup(vm: handle, memory: memory, memorySize: configuration.memorySize, portBus: portBus,
                               mmioBus: mmioBus, devices: devices)
            mmio = nil
        case .mmio:
            pci = nil
            mmio = try MMIOSetup(vm: handle, memory: memory, mmioBus: mmioBus, devices: devices)
        }

        // Load the kernel and describe the machine to it, or put back the saved RAM.
        let entry: EntryState?
        switch start {
        case .boot:
            guard let images else { throw .boot(step: "preparing the guest", message: "no kernel image was read") }
            entry = try GuestBoot.load(
                kernel: images.kernel, initrd: images.initrd, configuration: configuration,
                memory: memory, pci: pci?.acpi, mmio: mmio)
        case let .restore(_, restored, _):
            // A mapped memory file already holds the guest's RAM.
            if case let .image(memoryImage) = restored { try Self.fill(memory, from: memoryImage) }
            entry = nil
        }

        var vcpus: [VCPUHandle] = []
        do {
            let supported = try system.supportedCPUID()
            let policy = CPUIDPolicy(cpuCount: configuration.cpuCount)
            for id in 0..<configuration.cpuCount {
                let vcpu = try handle.createVCPU(id: UInt32(id))
                try VCPUSetup.configure(vcpu, cpuid: policy.entries(for: id, supported: supported))
                vcpus.append(vcpu)
            }
            switch start {
            case .boot:
                if let entry { try VCPUSetup.setEntryRegisters(vcpus[0], entry: entry) }
            case let .restore(state, _, _):
                // VM-wide state first (Firecracker's order), then each vCPU
                // over the CPUID its set-up gave it.
                try handle.restoreState(state.vm, clockRealtime: state.clockRealtime)
                for (vcpu, saved) in zip(vcpus, state.vcpus) { try vcpu.restoreState(saved) }
            }
        } catch {
            throw .kvm(error)
        }
        self.vcpus = vcpus
        exitCounters = vcpus.map { _ in VCPUExitCounters() }
        exitTraces = configuration.exitTracePath == nil ? [] : vcpus.map { _ in ExitTrace() }

        try attachLegacyDevices()
        if case let .restore(_, _, deviceSections) = start {
            try restoreDeviceSections(deviceSections)
        }
    }

    /// A VM that never ran (or whose run ended) still has its devices on
    /// the buses; detaching them frees the guest memory and the KVM VM.
    deinit {
        shutdownDevices()
    }

    /// Stops every virtio device (worker threads joined); once no vCPU runs.
    func shutdownDevices() {
        pci?.shutdown()
        mmio?.shutdown()
        // Nothing writes console output any more: flush it (bounded) and end `serial-out`.
        serialBuffer?.stop()
    }

    private func attachLegacyDevices() throws(VMMError) {
        let i8042 = I8042 { [weak self] in self?.requestStop(.rebootRequested) }
        let power = ACPIPowerDevice(
            softOffSleepType: Layout.acpiS5SleepType, resetValue: Layout.acpiResetValue,
            onPowerOff: { [weak self] in self?.requestStop(.poweredOff) },
            onReset: { [weak self] in self?.requestStop(.rebootRequested) })
        do {
            try portBus.insert(serial, base: UInt64(Layout.com1Port), length: 8)
            try portBus.insert(i8042, base: UInt64(Layout.i8042DataPort), length: 5)
            try portBus.insert(power, base: UInt64(Layout.acpiSleepControlPort), length: 3)
            if let bootTimer { try mmioBus.insert(bootTimer, base: Layout.bootTimerStart.rawValue, length: Layout.bootTimerSize) }
        } catch {
            throw .bus(error)
        }
    }

    /// Reads a kernel or initrd: a regular file (opened O_NONBLOCK, so a FIFO
    /// cannot hang the API thread) of at most `maximumSize` bytes.
    static func readFile(role: String, path: String, maximumSize: UInt64) throws(VMMError) -> [UInt8] {
        do {
            return try OwnedFileDescriptor.readRegularFile(path, maximumSize: maximumSize)
        } catch {
            throw VMMError(reading: role, path: path, error)
        }
    }

    static func makeSerialOutput(_ mode: SerialMode) throws(VMMError) -> any SerialOutput {
        switch mode {
        case .stdio:
            return try buffered(OwnedFileDescriptor(adopting: dup(STDOUT_FILENO)))
        case let .file(path):
            // O_NONBLOCK: a FIFO without a reader (serial_out_path from an API caller)
            // fails with ENXIO instead of hanging the API thread in open(2).
            let file: OwnedFileDescriptor
            do {
                file = try OwnedFileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, mode: 0o644)
            } catch where error.errno.rawValue == ENXIO {
                throw .invalidConfiguration(field: "serial output", value: path, expected: "a file, or a FIFO that a reader has open")
            } catch {
                throw .readFile(role: "serial log", path: path, cause: error)
            }
            // Writes block again: the serial-out thread, not a vCPU, waits on them.
            do {
                let flags = try systemCall("fcntl F_GETFL") { fcntl(file.rawValue, F_GETFL) }
                _ = try systemCall("fcntl F_SETFL") { fcntl(file.rawValue, F_SETFL, flags & ~O_NONBLOCK) }
            } catch {
                throw .host(step: "serial output \(path)", cause: error)
            }
            return try buffered(file)
        case .none:
            return DiscardingSerialOutput()
        }
    }

    /// Console output to `descriptor` through a bounded buffer and its
    /// `serial-out` thread, so that no vCPU ever blocks on it.
    private static func buffered(_ descriptor: OwnedFileDescriptor) throws(VMMError) -> BufferedSerialOutput {
        do {
            return try BufferedSerialOutput(descriptor: descriptor)
        } catch {
            throw .host(step: "starting the serial-out thread", cause: error)
        }
    }

    /// Ends the run with `reason` unless it already ended; callable from any thread.
    /// Returns whether this request was the one that ended the run.
    @discardableResult
    func requestStop(_ reason: VMExitReason) -> Bool {
        let first = exitReason.withLock { current -> Bool in
            guard current == nil else { return false }
            current = reason
            return true
        }
        if first { try? stopEvent.signal() }
        return first
    }

    /// SIGINT/SIGTERM/SIGHUP end the run even when a reboot was requested
    /// first and the run has not ended yet: the process is asked to go away,
    /// and a reboot would only start another run (a client rebooting the VM
    /// in a loop must not keep a signalled VMM alive).
    func stopForSignal(_ signal: Int32) {
        let changed = exitReason.withLock { current -> Bool in
            switch current {
            case nil, .rebootRequested?:
                current = .stoppedBySignal(signal)
                return true
            default:
                return false
            }
        }
        if changed { try? stopEvent.signal() }
    }
}

/// An interrupt line backed by an irqfd: writing the eventfd pulses the GSI
/// inside the kernel.
final class EventFDInterruptLine: InterruptLine {
    let eventFD: EventFD

    init(vm: VirtualMachineHandle, gsi: UInt32) throws(KVMError) {
        do {
            eventFD = try EventFD()
        } catch {
            throw .systemCall(step: "eventfd for GSI \(gsi)", cause: error)
        }
        try vm.registerIRQFD(eventFD, gsi: gsi)
    }

    func trigger() {
        try? eventFD.signal()
    }
}

/// Where guest RAM goes: below the 32-bit MMIO hole, and above 4 GiB for the rest.
public enum MemoryPlan {
    public static func ramRanges(memorySize: UInt64) -> [(start: GuestAddress, size: UInt64)] {
        let below = min(memorySize, Layout.mmioHoleStart.rawValue)
        var ranges: [(start: GuestAddress, size: UInt64)] = [(GuestAddress(0), below)]
        if memorySize > below {
            ranges.append((Layout.ramAbove4GStart, memorySize - below))
        }
        return ranges
    }
}
