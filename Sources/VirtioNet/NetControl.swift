import GuestMemory
import Virtio

/// The control virtqueue (VirtIO 1.2 section 5.1.6.5): offered only with
/// several queue pairs, for VIRTIO_NET_CTRL_MQ.
public enum VirtioNetControl {
    /// VIRTIO_NET_OK and VIRTIO_NET_ERR, the ack byte the device writes.
    public static let ok: UInt8 = 0
    public static let error: UInt8 = 1
    /// VIRTIO_NET_CTRL_MQ and its VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET command.
    public static let classMultiqueue: UInt8 = 4
    public static let commandPairsSet: UInt8 = 0
    /// The largest command payload read (VQ_PAIRS_SET has 2 bytes; others
    /// are refused unread past this).
    static let maximumPayload = 64
}

extension NetDataPlane {
    /// Serves every available control chain: {class, command}, the
    /// command's data (device-readable), then one device-writable ack byte.
    /// A chain without the header or without room for the ack breaks the
    /// queue (DEVICE_NEEDS_RESET), like other malformed requests.
    mutating func processControl() throws(VirtqueueError) {
        guard var queue = controlQueue, !broken else { return }
        defer { controlQueue = queue }
        var served = 0
        while true {
            while let chain = try queue.popChain() {
                guard let ack = try control(chain) else {
                    netCounters.controlMalformed.wrappingAdd(1, ordering: .relaxed)
                    controlQueue = queue
                    markBroken(reason: "malformed control request (head \(chain.head)): it needs a 2-byte device-readable header and a device-writable ack byte")
                    return
                }
                var writer = ChainWriter(memory: memory, buffers: chain.writable)
                do {
                    _ = try writer.write(bytes: [ack])
                } catch {
                    throw .memory(error)
                }
                try queue.addUsed(head: chain.head, writtenLength: 1)
                counters.requests.wrappingAdd(1, ordering: .relaxed)
                served += 1
            }
            if try !queue.enableNotifications() { break }
        }
        if served > 0, try queue.shouldInterrupt(), let index = controlQueueIndex { signal(queue: index) }
    }

    /// The ack for one control chain, or nil when it is malformed.
    mutating func control(_ chain: DescriptorChain) throws(VirtqueueError) -> UInt8? {
        guard chain.writableLength >= 1, chain.readableLength >= 2 else { return nil }
        var reader = ChainReader(memory: memory, buffers: chain.readable)
        let header: [UInt8]
        let data: [UInt8]
        do {
            guard let bytes = try reader.readBytes(count: 2) else { return nil }
            header = bytes
            let rest = Int(clamping: min(reader.remaining, UInt64(VirtioNetControl.maximumPayload)))
            data = try reader.readBytes(count: rest) ?? []
        } catch {
            throw .memory(error)
        }
        guard header[0] == VirtioNetControl.classMultiqueue, header[1] == VirtioNetControl.commandPairsSet,
              let pairs, data.count >= 2 else {
            netCounters.controlRefused.wrappingAdd(1, ordering: .relaxed)
            return VirtioNetControl.error
        }
        let requested = Int(data[0]) | Int(data[1]) << 8
        guard (1...pairs.maximum).contains(requested) else {
            netCounters.controlRefused.wrappingAdd(1, ordering: .relaxed)
            return VirtioNetControl.error
        }
        pairs.active.store(requested, ordering: .releasing)
        // The other pairs' workers look again: newly enabled ones start
        // serving, disabled ones stop reading their tap queue.
        for (index, waker) in pairs.wakers.enumerated() where index != pair {
            try? waker.signal()
        }
        return VirtioNetControl.ok
    }
}
