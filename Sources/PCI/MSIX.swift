import SnapshotFormat
import Synchronization

/// What happened to an interrupt a function raised through MSI-X.
public enum MSIXDelivery: Equatable, Sendable {
    /// MSI-X is off: the function uses INTx instead.
    case disabled
    case delivered
    /// The vector (or the whole function) is masked: its PBA bit is set and
    /// the interrupt is sent when the guest unmasks it.
    case pending
    /// No such vector (the driver assigned VIRTIO_MSI_NO_VECTOR, say): nothing sent.
    case noVector
}

/// A function's MSI-X state (PCI Local Bus 3.0, section 6.8.2): the vector
/// table and pending-bit array the guest reaches through a BAR, and the
/// enable and function-mask bits of the capability's message control.
/// Masking is handled here, in user space: a masked vector's interrupt sets
/// its pending bit, and unmasking a pending vector sends it. A vector's KVM
/// route is (re)installed when it becomes deliverable with a new message,
/// not on every table write.
public final class MSIXTable: Sendable {
    public static let entrySize = 16
    /// Message control bits.
    public static let enableBit: UInt16 = 1 << 15
    public static let functionMaskBit: UInt16 = 1 << 14
    static let vectorMaskBit: UInt8 = 1

    public let vectors: [MSIVector]
    let router: any MSIRouter

    private struct State {
        var table: [UInt8]
        var pending: [Bool]
        var enabled = false
        var functionMasked = false
        var routed: [MSIMessage?]
    }
    private let state: Mutex<State>

    public init(vectors: [MSIVector], router: any MSIRouter) {
        self.vectors = vectors
        self.router = router
        var table = [UInt8](repeating: 0, count: vectors.count * Self.entrySize)
        // Every vector starts masked (section 6.8.2.9).
        for vector in vectors.indices { table[vector * Self.entrySize + 12] = Self.vectorMaskBit }
        state = Mutex(State(table: table, pending: Array(repeating: false, count: vectors.count),
                            routed: Array(repeating: nil, count: vectors.count)))
    }

    public var vectorCount: Int { vectors.count }
    /// Bytes of the table in its BAR.
    public var tableSize: Int { vectors.count * Self.entrySize }
    /// Bytes of the pending-bit array (whole QWORDs).
    public var pendingBitArraySize: Int { max(1, (vectors.count + 63) / 64) * 8 }

    /// The capability body (after ID and next pointer) for a table at
    /// `tableOffset` in BAR `tableBAR` and the PBA at `pbaOffset` in
    /// `pbaBAR`, and the writable mask: only enable and function mask.
    public static func capability(vectorCount: Int, tableBAR: Int, tableOffset: UInt32, pbaBAR: Int, pbaOffset: UInt32) -> (body: [UInt8], writableMask: [UInt8]) {
        let control = UInt16(max(1, min(vectorCount, 2048)) - 1)
        let table = tableOffset & ~7 | UInt32(tableBAR & 7)
        let pba = pbaOffset & ~7 | UInt32(pbaBAR & 7)
        var body: [UInt8] = [UInt8(truncatingIfNeeded: control), UInt8(truncatingIfNeeded: control >> 8)]
        for value in [table, pba] {
            body += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
        }
        let mask: [UInt8] = [0, UInt8(truncatingIfNeeded: (enableBit | functionMaskBit) >> 8)] + Array(repeating: 0, count: 8)
        return (body, mask)
    }

    public var isEnabled: Bool { state.withLock { $0.enabled } }

    /// Applies the capability's message control as the guest left it.
    public func setControl(_ messageControl: UInt16) {
        state.withLock { state in
            state.enabled = messageControl & Self.enableBit != 0
            state.functionMasked = messageControl & Self.functionMaskBit != 0
            for vector in vectors.indices { update(vector, &state) }
        }
    }

    /// Raises `vector`: sent, left pending while masked, or refused.
    public func signal(_ vector: Int) -> MSIXDelivery {
        state.withLock { state in
            guard state.enabled else { return .disabled }
            guard vectors.indices.contains(vector) else { return .noVector }
            guard isDeliverable(vector, state) else {
                state.pending[vector] = true
                return .pending
            }
            vectors[vector].line.trigger()
            return .delivered
        }
    }

    /// Whether `vector` has its pending bit set.
    public func isPending(_ vector: Int) -> Bool {
        state.withLock { vectors.indices.contains(vector) && $0.pending[vector] }
    }

    // MARK: BAR access

    public func readTable(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        state.withLock { state in
            for index in data.indices {
                let position = offset &+ UInt64(index)
                data[index] = position < UInt64(state.table.count) ? state.table[Int(position)] : 0
            }
        }
    }

    public func writeTable(offset: UInt64, from data: UnsafeRawBufferPointer) {
        state.withLock { state in
            var touched: Set<Int> = []
            for index in data.indices {
                let position = offset &+ UInt64(index)
                guard position < UInt64(state.table.count) else { continue }
                let byte = Int(position)
                let mask: UInt8
                switch byte % Self.entrySize {
                case 0: mask = 0xFC // the address is DWORD aligned
                case 12: mask = Self.vectorMaskBit
                case 13, 14, 15: mask = 0
                default: mask = 0xFF
                }
                state.table[byte] = (state.table[byte] & ~mask) | (data[index] & mask)
                touched.insert(byte / Self.entrySize)
            }
            for vector in touched.sorted() { update(vector, &state) }
        }
    }

    public func readPendingBits(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        state.withLock { state in
            for index in data.indices {
                let position = offset &+ UInt64(index)
                var byte: UInt8 = 0
                if position < UInt64(pendingBitArraySize) {
                    for bit in 0..<8 {
                        let vector = Int(position) * 8 + bit
                        if vector < state.pending.count && state.pending[vector] { byte |= 1 << UInt8(bit) }
                    }
                }
                data[index] = byte
            }
        }
    }

    // MARK: Internals

    private func message(_ vector: Int, _ state: State) -> MSIMessage {
        func word(_ offset: Int) -> UInt32 {
            (0..<4).reduce(UInt32(0)) { $0 | UInt32(state.table[vector * Self.entrySize + offset + $1]) << (8 * UInt32($1)) }
        }
        return MSIMessage(address: UInt64(word(4)) << 32 | UInt64(word(0)), data: word(8))
    }

    private func isDeliverable(_ vector: Int, _ state: State) -> Bool {
        state.enabled && !state.functionMasked && state.table[vector * Self.entrySize + 12] & Self.vectorMaskBit == 0
    }

    /// Routes a deliverable vector to its current message, and sends what was pending.
    private func update(_ vector: Int, _ state: inout State) {
        guard isDeliverable(vector, state) else { return }
        let message = message(vector, state)
        if state.routed[vector] != message {
            router.route(gsi: vectors[vector].gsi, to: message)
            state.routed[vector] = message
        }
        if state.pending[vector] {
            state.pending[vector] = false
            vectors[vector].line.trigger()
        }
    }
}

// MARK: Snapshots

/// An MSI-X table as a snapshot keeps it: the vector table and the pending
/// bits. Enable and function mask are in the capability's message control,
/// saved with the configuration space.
public struct MSIXState: Sendable, Equatable {
    public var table: [UInt8]
    public var pending: [Bool]

    public init(table: [UInt8], pending: [Bool]) {
        self.table = table
        self.pending = pending
    }

    public func encode(into encoder: inout StateEncoder) {
        encoder.encode(bytes: table)
        encoder.encode(array: pending) { $0.encode($1) }
    }

    /// Refuses another vector count than `vectorCount`, and bits a guest
    /// write can never set (the address's low two bits, the reserved
    /// vector-control bits).
    public static func decode(from decoder: inout StateDecoder, vectorCount: Int) throws(StateDecodingError) -> MSIXState {
        let tableOffset = decoder.offset
        let table = try decoder.decodeBytes(maximumLength: vectorCount * MSIXTable.entrySize)
        guard table.count == vectorCount * MSIXTable.entrySize else {
            throw .invalidValue(offset: tableOffset, what: "MSI-X table of \(table.count) bytes (\(vectorCount) vectors)")
        }
        for vector in 0..<vectorCount {
            let entry = vector * MSIXTable.entrySize
            guard table[entry] & 0x03 == 0, table[entry + 12] & ~MSIXTable.vectorMaskBit == 0,
                  table[entry + 13] == 0, table[entry + 14] == 0, table[entry + 15] == 0 else {
                throw .invalidValue(offset: tableOffset + 4 + entry, what: "MSI-X table entry \(vector)")
            }
        }
        let pendingOffset = decoder.offset
        let pending = try decoder.decodeArray(maximumCount: vectorCount) { (decoder) throws(StateDecodingError) in try decoder.decodeBool() }
        guard pending.count == vectorCount else {
            throw .invalidValue(offset: pendingOffset, what: "\(pending.count) MSI-X pending bits (\(vectorCount) vectors)")
        }
        return MSIXState(table: table, pending: pending)
    }
}

extension MSIXTable {
    public func captureState() -> MSIXState {
        state.withLock { MSIXState(table: $0.table, pending: $0.pending) }
    }

    /// Puts a decoded table back (its size was checked against this table's).
    /// Routes are installed by the next `setControl`, which the restore of
    /// the configuration space's message control makes.
    public func restore(_ saved: MSIXState) {
        state.withLock { state in
            guard saved.table.count == state.table.count, saved.pending.count == state.pending.count else { return }
            state.table = saved.table
            state.pending = saved.pending
            state.routed = Array(repeating: nil, count: vectors.count)
        }
    }
}
