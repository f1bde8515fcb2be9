import GuestMemory
import HostSystem
import SnapshotFormat
import Virtio

extension VsockWorker {
    /// Stops the thread for a snapshot, keeping the muxer and its
    /// connections (the VM may resume). The muxer's lock is the thread's
    /// for a whole wake-up, which completes every chain it takes.
    func hold() {
        let running = thread.withLock { current -> HostThread? in
            defer { current = nil }
            return current
        }
        guard let running else { return }
        try? stopEvent.signal()
        running.join()
        _ = try? stopEvent.consume()
    }

    /// Starts the thread again after `hold`.
    func release() {
        thread.withLock { current in
            guard current == nil else { return }
            current = try? HostThread(name: "virtio-vsock") { [self] in self.run() }
        }
    }
}

extension VsockMuxer {
    /// The RX and TX queues' walking state. An RX chain taken and not used
    /// (`spareChain`) is stepped back over, so a restored device takes it again.
    var walkStates: [Int: VirtqueueState] {
        var states: [Int: VirtqueueState] = [:]
        if var walk = receiveQueue?.walkState {
            if spareChain != nil { walk.nextAvailable &-= 1 }
            states[Vsock.receiveQueue] = walk
        }
        if let walk = transmitQueue?.walkState { states[Vsock.transmitQueue] = walk }
        return states
    }
}

extension VirtioVsockDevice {
    /// `VVSK`: the guest CID (a restore with another configured CID is
    /// refused). Open connections are not kept: their host sockets belong
    /// to this process. A restored device sends TRANSPORT_RESET on the event
    /// queue when it is activated, as the specification and Firecracker do,
    /// so the guest drops its connections.
    public static let snapshotTag = SectionTag("VVSK")
    /// struct virtio_vsock_event's only id (VirtIO 1.2 section 5.10.6.7).
    static let transportResetEvent: UInt32 = 0

    public func suspendForSnapshot() throws(VirtioDeviceError) -> VirtioDeviceSnapshot {
        var queues = active.withLock { (worker) -> [Int: VirtqueueState] in
            guard let worker else { return [:] }
            worker.hold()
            return worker.muxer.withLock { $0.walkStates }
        }
        if let event = eventQueue.withLock({ $0?.queue }) { queues[event.index] = event.queue.walkState }
        var encoder = StateEncoder()
        encoder.section(Self.snapshotTag) { $0.encode(guestCID) }
        return VirtioDeviceSnapshot(queues: queues, device: encoder.bytes)
    }

    public func resumeAfterSnapshot() {
        active.withLock { $0?.release() }
    }

    public func restoreSnapshot(device state: [UInt8]) throws(VirtioDeviceError) {
        var decoder = StateDecoder(state)
        let cid: UInt64
        do {
            cid = try decoder.section(Self.snapshotTag) { (decoder) throws(StateDecodingError) -> UInt64 in try decoder.decode() }
            try decoder.finish()
        } catch {
            throw .snapshotState(device: "\(deviceType)", cause: error)
        }
        guard cid == guestCID else {
            throw .snapshotMismatch(device: "\(deviceType)", part: "the guest CID", saved: "\(cid)", configured: "\(guestCID)")
        }
        pendingTransportReset.store(true, ordering: .releasing)
    }

    /// Puts VIRTIO_VSOCK_EVENT_TRANSPORT_RESET in the driver's next event
    /// buffer. With no buffer posted, or a broken queue, the event is lost
    /// (the driver posts event buffers when it probes).
    func sendTransportReset(interrupt: any VirtioInterrupt) {
        eventQueue.withLock { entry in
            guard var event = entry?.queue, let memory = entry?.memory else { return }
            defer { entry = (event, memory) }
            do throws(VirtqueueError) {
                guard let chain = try event.queue.popChain() else { return }
                var written: UInt32 = 0
                if let buffer = chain.writable.first, buffer.length >= 4 {
                    try VirtqueueError.guarding { () throws(GuestMemoryError) in
                        try memory.write(Self.transportResetEvent.littleEndian, at: buffer.address)
                    }
                    written = 4
                }
                try event.queue.addUsed(head: chain.head, writtenLength: written)
                if try event.queue.shouldInterrupt() { interrupt.signalUsedBuffers(queue: event.index) }
            } catch {
                interrupt.reportDeviceError("virtio-vsock: event queue: \(error)")
            }
        }
    }
}
