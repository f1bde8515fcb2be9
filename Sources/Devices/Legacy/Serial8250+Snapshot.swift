import SnapshotFormat

/// The 8250's registers as a snapshot keeps them. The receive FIFO's
/// contents are not kept: they are host input the guest had not read yet
/// (typed keys), and a restored VM starts with an empty FIFO.
public struct Serial8250State: Sendable, Equatable {
    public var interruptEnable: UInt8
    public var lineControl: UInt8
    public var modemControl: UInt8
    public var scratch: UInt8
    public var divisorLow: UInt8
    public var divisorHigh: UInt8
    public var fifoControl: UInt8
    /// A transmitter-empty interrupt raised and not yet acknowledged (IIR read).
    public var transmitterEmptyPending: Bool
    public var overrun: Bool

    public static let tag = SectionTag("SERI")

    public init(interruptEnable: UInt8 = 0, lineControl: UInt8 = 0x03, modemControl: UInt8 = 0x08, scratch: UInt8 = 0,
                divisorLow: UInt8 = 0x0C, divisorHigh: UInt8 = 0, fifoControl: UInt8 = 0,
                transmitterEmptyPending: Bool = false, overrun: Bool = false) {
        self.interruptEnable = interruptEnable
        self.lineControl = lineControl
        self.modemControl = modemControl
        self.scratch = scratch
        self.divisorLow = divisorLow
        self.divisorHigh = divisorHigh
        self.fifoControl = fifoControl
        self.transmitterEmptyPending = transmitterEmptyPending
        self.overrun = overrun
    }

    public func encode(into encoder: inout StateEncoder) {
        for byte in [interruptEnable, lineControl, modemControl, scratch, divisorLow, divisorHigh, fifoControl] {
            encoder.encode(byte)
        }
        encoder.encode(transmitterEmptyPending)
        encoder.encode(overrun)
    }

    /// Reads what `encode` wrote; IER and MCR bits the device never stores are refused.
    public static func decode(from decoder: inout StateDecoder) throws(StateDecodingError) -> Serial8250State {
        var state = Serial8250State()
        let ierOffset = decoder.offset
        state.interruptEnable = try decoder.decode()
        guard state.interruptEnable & ~0x0F == 0 else { throw .invalidValue(offset: ierOffset, what: "8250 IER") }
        state.lineControl = try decoder.decode()
        let mcrOffset = decoder.offset
        state.modemControl = try decoder.decode()
        guard state.modemControl & ~0x1F == 0 else { throw .invalidValue(offset: mcrOffset, what: "8250 MCR") }
        state.scratch = try decoder.decode()
        state.divisorLow = try decoder.decode()
        state.divisorHigh = try decoder.decode()
        state.fifoControl = try decoder.decode()
        state.transmitterEmptyPending = try decoder.decodeBool()
        state.overrun = try decoder.decodeBool()
        return state
    }
}

extension Serial8250 {
    /// The registers now (the input FIFO is left out, see `Serial8250State`).
    public func captureState() -> Serial8250State {
        state.withLock { state in
            Serial8250State(interruptEnable: state.interruptEnable, lineControl: state.lineControl, modemControl: state.modemControl,
                            scratch: state.scratch, divisorLow: state.divisorLow, divisorHigh: state.divisorHigh,
                            fifoControl: state.fifoControl, transmitterEmptyPending: state.transmitterEmptyPending,
                            overrun: state.overrun)
        }
    }

    /// Puts the registers back, with an empty input FIFO. No interrupt is
    /// raised: one the guest had pending is in the saved irqchip state.
    public func restore(_ saved: Serial8250State) {
        state.withLock { state in
            state.interruptEnable = saved.interruptEnable
            state.lineControl = saved.lineControl
            state.modemControl = saved.modemControl
            state.scratch = saved.scratch
            state.divisorLow = saved.divisorLow
            state.divisorHigh = saved.divisorHigh
            state.fifoControl = saved.fifoControl
            state.transmitterEmptyPending = saved.transmitterEmptyPending
            state.overrun = saved.overrun
            state.input.removeAll()
        }
    }
}
