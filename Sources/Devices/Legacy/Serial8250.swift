import Synchronization

/// Where a UART's transmitted bytes go.
public protocol SerialOutput: Sendable {
    func write(_ bytes: [UInt8])
}

/// An 8250/16550A UART as Linux's 8250 driver and firmware expect: transmit
/// is instantaneous, received bytes wait in a FIFO, and interrupts follow the
/// IER. Every register accepts any value: the guest drives it.
public final class Serial8250: BusDevice {
    // Register offsets.
    static let dataRegister: UInt64 = 0           // RBR/THR, or DLL with DLAB
    static let interruptEnable: UInt64 = 1        // IER, or DLM with DLAB
    static let interruptIdentify: UInt64 = 2      // IIR (read) / FCR (write)
    static let lineControl: UInt64 = 3
    static let modemControl: UInt64 = 4
    static let lineStatus: UInt64 = 5
    static let modemStatus: UInt64 = 6
    static let scratch: UInt64 = 7

    // Bits.
    static let ierReceivedData: UInt8 = 0x01
    static let ierTransmitterEmpty: UInt8 = 0x02
    static let iirNoInterrupt: UInt8 = 0x01
    static let iirTransmitterEmpty: UInt8 = 0x02
    static let iirReceivedData: UInt8 = 0x04
    static let iirFIFOEnabled: UInt8 = 0xC0
    static let lcrDivisorLatch: UInt8 = 0x80
    static let lsrDataReady: UInt8 = 0x01
    static let lsrOverrun: UInt8 = 0x02
    static let lsrTransmitterHoldingEmpty: UInt8 = 0x20
    static let lsrTransmitterEmpty: UInt8 = 0x40
    static let mcrLoopback: UInt8 = 0x10
    static let msrDefault: UInt8 = 0xB0           // DCD | DSR | CTS: a cable is attached
    /// Bytes held for the guest before further input is dropped.
    public static let inputCapacity = 4096

    struct State {
        var interruptEnable: UInt8 = 0
        var lineControl: UInt8 = 0x03          // 8N1
        var modemControl: UInt8 = 0x08         // OUT2
        var scratch: UInt8 = 0
        var divisorLow: UInt8 = 0x0C           // 9600 baud
        var divisorHigh: UInt8 = 0
        var fifoControl: UInt8 = 0
        var transmitterEmptyPending = false
        var overrun = false
        /// The receive FIFO: fixed storage, so neither host input nor the
        /// guest's own loopback writes can grow it.
        var input = ByteRing(capacity: Serial8250.inputCapacity)

        var hasInput: Bool { !input.isEmpty }
    }

    // Internal so tests can check the FIFO's storage stays bounded.
    let state = Mutex(State())
    private let output: any SerialOutput
    private let interrupt: any InterruptLine

    public init(output: any SerialOutput, interrupt: any InterruptLine) {
        self.output = output
        self.interrupt = interrupt
    }

    /// Queues bytes from the host (keyboard, socket) for the guest to read.
    /// Returns how many were accepted; the rest are dropped when full.
    @discardableResult
    public func enqueueInput(_ bytes: some Collection<UInt8>) -> Int {
        let (accepted, raise) = state.withLock { state -> (Int, Bool) in
            var accepted = 0
            for byte in bytes {
                guard state.input.append(byte) else { break }
                accepted += 1
            }
            if accepted < bytes.count { state.overrun = true }
            return (accepted, accepted > 0 && state.interruptEnable & Self.ierReceivedData != 0)
        }
        if raise { interrupt.trigger() }
        return accepted
    }

    /// Room left in the input FIFO.
    public var inputSpace: Int {
        state.withLock { $0.input.space }
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard data.count > 0 else { return }
        let value = state.withLock { state -> UInt8 in
            let divisorLatch = state.lineControl & Self.lcrDivisorLatch != 0
            switch offset {
            case Self.dataRegister:
                if divisorLatch { return state.divisorLow }
                return state.input.removeFirst() ?? 0
            case Self.interruptEnable:
                return divisorLatch ? state.divisorHigh : state.interruptEnable
            case Self.interruptIdentify:
                let fifoBits = state.fifoControl & 0x01 != 0 ? Self.iirFIFOEnabled : 0
                if state.interruptEnable & Self.ierReceivedData != 0 && state.hasInput {
                    return Self.iirReceivedData | fifoBits
                }
                if state.interruptEnable & Self.ierTransmitterEmpty != 0 && state.transmitterEmptyPending {
                    // Reading IIR acknowledges the transmitter-empty interrupt.
                    state.transmitterEmptyPending = false
                    return Self.iirTransmitterEmpty | fifoBits
                }
                return Self.iirNoInterrupt | fifoBits
            case Self.lineControl:
                return state.lineControl
            case Self.modemControl:
                return state.modemControl
            case Self.lineStatus:
                var status = Self.lsrTransmitterHoldingEmpty | Self.lsrTransmitterEmpty
                if state.hasInput { status |= Self.lsrDataReady }
                if state.overrun { status |= Self.lsrOverrun; state.overrun = false }
                return status
            case Self.modemStatus:
                guard state.modemControl & Self.mcrLoopback != 0 else { return Self.msrDefault }
                // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD (Linux's probe checks this).
                let control = state.modemControl
                return ((control & 0x01) << 5) | ((control & 0x02) << 3) | ((control & 0x04) << 4) | ((control & 0x08) << 4)
            case Self.scratch:
                return state.scratch
            default:
                return 0xFF
            }
        }
        data[0] = value
        for position in 1..<data.count { data[position] = 0 }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        var transmitted: UInt8?
        let raise = state.withLock { state -> Bool in
            let divisorLatch = state.lineControl & Self.lcrDivisorLatch != 0
            switch offset {
            case Self.dataRegister:
                if divisorLatch { state.divisorLow = value; return false }
                if state.modemControl & Self.mcrLoopback != 0 {
                    // A full FIFO drops the byte and reports an overrun (LSR bit 1), as a UART does.
                    if !state.input.append(value) { state.overrun = true }
                } else {
                    transmitted = value
                }
                // The byte leaves at once, so the holding register is empty again.
                state.transmitterEmptyPending = true
                return state.interruptEnable & Self.ierTransmitterEmpty != 0
                    || (state.modemControl & Self.mcrLoopback != 0 && state.interruptEnable & Self.ierReceivedData != 0)
            case Self.interruptEnable:
                if divisorLatch { state.divisorHigh = value; return false }
                let enablingTransmit = value & Self.ierTransmitterEmpty != 0 && state.interruptEnable & Self.ierTransmitterEmpty == 0
                state.interruptEnable = value & 0x0F
                // Enabling THRE interrupts while the holding register is empty raises one at once.
                if enablingTransmit { state.transmitterEmptyPending = true }
                return enablingTransmit || (value & Self.ierReceivedData != 0 && state.hasInput)
            case Self.interruptIdentify:
                state.fifoControl = value
                if value & 0x02 != 0 { state.input.removeAll() }  // clear receive FIFO
                return false
            case Self.lineControl:
                state.lineControl = value
            case Self.modemControl:
                state.modemControl = value & 0x1F
            case Self.scratch:
                state.scratch = value
            default:
                break
            }
            return false
        }
        if let transmitted { output.write([transmitted]) }
        if raise { interrupt.trigger() }
    }
}

/// A fixed-capacity FIFO of bytes: storage is allocated once, so whoever
/// fills it (the host, or a guest in loopback mode) cannot make it grow.
struct ByteRing {
    private var storage: [UInt8]
    private var start = 0
    private(set) var count = 0

    init(capacity: Int) {
        storage = [UInt8](repeating: 0, count: max(capacity, 1))
    }

    var capacity: Int { storage.count }
    var isEmpty: Bool { count == 0 }
    var space: Int { storage.count - count }

    /// Appends `byte`; false (and nothing stored) when full.
    mutating func append(_ byte: UInt8) -> Bool {
        guard count < storage.count else { return false }
        storage[(start + count) % storage.count] = byte
        count += 1
        return true
    }

    /// The oldest byte, removed; nil when empty.
    mutating func removeFirst() -> UInt8? {
        guard count > 0 else { return nil }
        let byte = storage[start]
        start = (start + 1) % storage.count
        count -= 1
        return byte
    }

    mutating func removeAll() {
        start = 0
        count = 0
    }
}
