import ArchX86
import Glibc
import HostSystem
import KVM
import Synchronization

extension VirtualMachine {
    /// Runs the guest until it powers off, reboots, crashes or the user quits.
    /// Blocks the calling thread, which serves console input meanwhile.
    public func run() throws(VMMError) -> VMExitReason {
        do {
            try HostThread.installKickHandler(signal: Self.kickSignal)
        } catch {
            throw .host(step: "installing the vCPU kick handler", cause: error)
        }
        // SIGINT/SIGTERM/SIGHUP end the run through the event loop; blocked
        // before the vCPU threads start so that they inherit the mask.
        let signals: SignalFD
        do {
            signals = try SignalFD(signals: [SIGINT, SIGTERM, SIGHUP])
        } catch {
            throw .host(step: "setting up signal handling", cause: error)
        }
        let terminal = RawTerminal()
        let readsConsole = configuration.serial == .stdio
        if readsConsole { terminal.enable() }
        defer { terminal.restore() }

        let runStart = RunTiming.now()
        timing.withLock { $0.startedAt = runStart }
        // Swiftlet's filters: the main thread's before any guest code runs
        // (its program allows what the vCPU threads, which inherit it, need).
        SeccompFilters.installOnMainThreadBeforeVCPUs()
        var threads: [HostThread] = []
        for vcpu in vcpus {
            pauseGate.vcpuStarted()
            do {
                threads.append(try HostThread(name: "vcpu\(vcpu.id)") { [self] in
                    self.runVCPU(vcpu)
                    self.pauseGate.vcpuFinished()
                })
            } catch {
                pauseGate.vcpuFinished()
                requestStop(.crashed(report: "could not start vCPU \(vcpu.id) thread: \(error)"))
                break
            }
        }

        vcpuThreads.withLock { $0 = threads }
        // Start-up code is done: its pages leave this process's resident set
        // (they stay in the page cache; BENCHMARKS.md P2).
        ProgramImage.releaseReadOnlyPages()
        // --seccomp-filter: the main thread's `vmm` filter, now that the vCPU
        // threads (which must not inherit it) have started.
        SeccompFilters.installOnMainThreadOnce()
        serveEvents(readsConsole: readsConsole, signals: signals)

        // Stop every vCPU: immediate_exit covers a vCPU about to enter the
        // guest, the signal one already inside it.
        stopping.store(true, ordering: .sequentiallyConsistent)
        pauseGate.release()
        for (vcpu, thread) in zip(vcpus, threads) {
            vcpu.requestExit()
            thread.signal(Self.kickSignal)
        }
        for thread in threads { thread.join() }
        let stoppedAt = RunTiming.now()
        // Devices last: no vCPU can touch them any more.
        shutdownDevices()
        vcpuThreads.withLock { $0 = [] }
        traceWindow.withLock { $0 = (runStart, stoppedAt) }
        return exitReason.withLock { $0 } ?? .stoppedByUser
    }

    /// `--trace-exits`: the report of the last run (nil without the option or before a run ended).
    public func exitTraceReport(reason: String) -> String? {
        guard !exitTraces.isEmpty, let (runStart, stoppedAt) = traceWindow.withLock({ $0 }) else { return nil }
        return ExitTrace.report(exitTraces, processStart: ProcessClock.start, runStart: runStart, stoppedAt: stoppedAt, reason: reason)
    }

    /// The main thread's event loop: console input and the stop event.
    private func serveEvents(readsConsole: Bool, signals: SignalFD) {
        let stopToken: UInt64 = 0, consoleToken: UInt64 = 1, signalToken: UInt64 = 2
        guard let epoll = try? Epoll() else {
            // Without epoll we can still wait for the stop event alone.
            _ = try? stopEvent.consume()
            return
        }
        try? epoll.add(stopEvent.descriptor.rawValue, token: stopToken)
        try? epoll.add(signals.descriptor.rawValue, token: signalToken)
        var consoleOpen = readsConsole && (try? epoll.add(STDIN_FILENO, token: consoleToken)) != nil
        var escapeFilter = ConsoleEscapeFilter()
        var buffer = [UInt8](repeating: 0, count: 512)
        while exitReason.withLock({ $0 }) == nil {
            guard let events = try? epoll.wait(timeout: -1) else { break }
            if events.contains(where: { $0.token == signalToken }), let signal = signals.next() {
                stopForSignal(signal)
            }
            for event in events where event.token == consoleToken && consoleOpen {
                let count = buffer.withUnsafeMutableBytes { raw in Glibc.read(STDIN_FILENO, raw.baseAddress, raw.count) }
                if count <= 0 {
                    if count == 0 || (errno != EINTR && errno != EAGAIN) {
                        // End of input (a pipe or /dev/null): the guest keeps running.
                        try? epoll.remove(STDIN_FILENO)
                        consoleOpen = false
                    }
                    continue
                }
                let (forward, quit) = escapeFilter.filter(buffer[..<count])
                deliverConsoleInput(forward)
                if quit { requestStop(.stoppedByUser) }
            }
        }
        // A signal that arrived after another stop request (or before this
        // run's loop first waited) is still pending: it decides how the run
        // ends, rather than being left for a next run that may never come.
        if let signal = signals.next() { stopForSignal(signal) }
    }

    /// Hands keyboard bytes to the UART, waiting while its FIFO is full so
    /// pasted text is not lost.
    private func deliverConsoleInput(_ bytes: [UInt8]) {
        var remaining = bytes[...]
        while !remaining.isEmpty && exitReason.withLock({ $0 }) == nil {
            let accepted: Int
            if let virtioConsole {
                accepted = virtioConsole.enqueueInput(remaining.prefix(virtioConsole.inputSpace))
            } else {
                accepted = serial.enqueueInput(remaining.prefix(serial.inputSpace))
            }
            remaining = remaining.dropFirst(accepted)
            if !remaining.isEmpty { usleep(1000) }
        }
    }

    /// One vCPU thread: enter the guest, handle the exit, repeat.
    func runVCPU(_ vcpu: VCPUHandle) {
        HostThread.unblockSignal(Self.kickSignal)
        let counters = exitCounters[Int(vcpu.id)]
        let trace = exitTraces.isEmpty ? nil : exitTraces[Int(vcpu.id)]
        // KVM finishes the instruction of an I/O exit only in the next
        // KVM_RUN, so after one the vCPU state is not yet consistent.
        var completionPending = false
        while !stopping.load(ordering: .relaxed) {
            if completionPending && pauseGate.pauseRequested {
                // Before parking for a pause (whose state may be saved), enter
                // once with immediate_exit set: KVM completes the I/O and
                // returns at once, as the KVM API advises before saving state.
                vcpu.requestExit()
            } else {
                pauseGate.parkIfPaused()
            }
            if stopping.load(ordering: .relaxed) { return }
            let exit: VCPUExit
            trace?.entering()
            do {
                exit = try vcpu.run()
            } catch {
                requestStop(.crashed(report: "vCPU \(vcpu.id): \(error)"))
                return
            }
            trace?.returned(exit)
            completionPending = exit != .interrupted
            counters.count(exit.kind)
            switch exit {
            case let .portOut(port, size, count):
                guard let data = vcpu.portIOData else { continue }
                for index in 0..<count {
                    let slice = UnsafeRawBufferPointer(rebasing: data[(index * size)..<((index + 1) * size)])
                    portBus.write(UInt64(port), from: slice)
                }
            case let .portIn(port, size, count):
                guard let data = vcpu.portIOData else { continue }
                for index in 0..<count {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: data[(index * size)..<((index + 1) * size)])
                    // Nothing there: the bus floats high, as on real hardware.
                    if !portBus.read(UInt64(port), into: slice) { slice.storeLittleEndianAllOnes() }
                }
            case let .mmioWrite(address, length):
                mmioBus.write(address, from: UnsafeRawBufferPointer(rebasing: vcpu.mmioData[..<length]))
            case let .mmioRead(address, length):
                let slice = UnsafeMutableRawBufferPointer(rebasing: vcpu.mmioData[..<length])
                if !mmioBus.read(address, into: slice) { slice.storeLittleEndianAllOnes() }
            case .interrupted:
                continue
            case .halt:
                // With the in-kernel LAPIC, HLT is handled by KVM; this only
                // happens if the guest halts with interrupts off for good.
                continue
            case .shutdown:
                requestStop(.crashed(report: crashReport(vcpu, cause: "triple fault (KVM_EXIT_SHUTDOWN)")))
                return
            case let .systemEvent(type):
                // 1 shutdown, 2 reset, 3 crash (struct kvm_run.system_event).
                switch type {
                case 1: requestStop(.poweredOff)
                case 2: requestStop(.rebootRequested)
                default: requestStop(.crashed(report: crashReport(vcpu, cause: "system event \(type)")))
                }
                return
            case let .internalError(suberror, data):
                let words = data.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
                requestStop(.crashed(report: crashReport(vcpu, cause: "KVM internal error: \(VCPUExit.internalErrorName(suberror)); data: \(words)")))
                return
            case let .failedEntry(reason):
                requestStop(.crashed(report: crashReport(vcpu, cause: "VM entry failed, hardware reason 0x\(String(reason, radix: 16))")))
                return
            case let .unhandled(reason):
                requestStop(.crashed(report: crashReport(vcpu, cause: "unhandled KVM exit reason \(reason)")))
                return
            }
        }
    }

    /// A multi-line report of a vCPU's state for crash messages.
    func crashReport(_ vcpu: VCPUHandle, cause: String) -> String {
        var lines = ["vCPU \(vcpu.id): \(cause)"]
        func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
        if let regs = try? vcpu.registers() {
            lines.append("  rip=\(hex(regs.rip)) rsp=\(hex(regs.rsp)) rflags=\(hex(regs.rflags))")
            lines.append("  rax=\(hex(regs.rax)) rbx=\(hex(regs.rbx)) rcx=\(hex(regs.rcx)) rdx=\(hex(regs.rdx))")
            lines.append("  rsi=\(hex(regs.rsi)) rdi=\(hex(regs.rdi)) rbp=\(hex(regs.rbp))")
        }
        if let sregs = try? vcpu.specialRegisters() {
            lines.append("  cr0=\(hex(sregs.cr0)) cr2=\(hex(sregs.cr2)) cr3=\(hex(sregs.cr3)) cr4=\(hex(sregs.cr4)) efer=\(hex(sregs.efer))")
            lines.append("  cs=\(hex(UInt64(sregs.cs.selector))) cpl=\(sregs.cs.dpl) cs.base=\(hex(sregs.cs.base)) long=\(sregs.cs.l)")
            // The bytes at RIP name the instruction (map RIP to a symbol with nm/addr2line).
            if let regs = try? vcpu.registers() {
                let paging = PageWalk.PagingState(cr0: sregs.cr0, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer)
                if let physical = PageWalk.translate(sregs.cs.base &+ regs.rip, state: paging, memory: memory),
                   let bytes = try? memory.readBytes(at: physical, count: 16) {
                    lines.append("  code at rip (guest-physical \(physical)): " + bytes.map { String($0, radix: 16).leftPadded(2) }.joined(separator: " "))
                }
            }
        }
        return lines.joined(separator: "\n")
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

extension UnsafeMutableRawBufferPointer {
    fileprivate func storeLittleEndianAllOnes() {
        for position in indices { self[position] = 0xFF }
    }
}
