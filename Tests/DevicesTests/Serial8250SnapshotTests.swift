import SnapshotFormat
import Testing
@testable import Devices

@Suite("8250 UART snapshot state")
struct Serial8250SnapshotTests {
    /// A UART the way a guest leaves it: divisor programmed, 7E1, FIFOs on,
    /// RDA and THRE interrupts enabled (THRE pending), loopback off, scratch set.
    static func programmed() -> Serial8250 {
        let uart = Serial8250(output: RecordingOutput(), interrupt: CountingInterrupt())
        uart.writeByte(3, 0x80)       // DLAB
        uart.writeByte(0, 0x01)       // DLL: 115200
        uart.writeByte(1, 0x02)       // DLM
        uart.writeByte(3, 0x1A)       // 7E1, DLAB off
        uart.writeByte(2, 0x07)       // FCR
        uart.writeByte(1, 0x03)       // IER: RDA | THRE
        uart.writeByte(4, 0x0B)       // MCR: DTR | RTS | OUT2
        uart.writeByte(7, 0x5A)       // scratch
        return uart
    }

    @Test("the registers a guest programmed encode, decode into a fresh UART and read back the same")
    func roundTrip() throws {
        let saved = Self.programmed().captureState()
        #expect(saved.divisorLow == 0x01 && saved.divisorHigh == 0x02 && saved.lineControl == 0x1A)
        #expect(saved.interruptEnable == 0x03 && saved.modemControl == 0x0B && saved.scratch == 0x5A && saved.transmitterEmptyPending)
        var encoder = StateEncoder()
        saved.encode(into: &encoder)
        var decoder = StateDecoder(encoder.bytes)
        let decoded = try Serial8250State.decode(from: &decoder)
        try decoder.finish()
        #expect(decoded == saved)

        let fresh = Serial8250(output: RecordingOutput(), interrupt: CountingInterrupt())
        fresh.enqueueInput([1, 2, 3])
        fresh.restore(decoded)
        #expect(fresh.captureState() == saved)
        #expect(fresh.readByte(7) == 0x5A && fresh.readByte(3) == 0x1A && fresh.readByte(4) == 0x0B)
        #expect(fresh.readByte(2) & 0x0F == 0x02, "the pending THRE interrupt came back")
        #expect(fresh.readByte(5) & 0x01 == 0, "the input FIFO is not kept")
    }

    @Test("a truncated section and out-of-range IER or MCR values are refused with typed errors")
    func refusesBadState() {
        var encoder = StateEncoder()
        Self.programmed().captureState().encode(into: &encoder)
        let bytes = encoder.bytes
        #expect(throws: StateDecodingError.self) {
            var decoder = StateDecoder(Array(bytes.dropLast()))
            _ = try Serial8250State.decode(from: &decoder)
        }
        var badIER = bytes
        badIER[0] = 0xF3
        var decoder = StateDecoder(badIER)
        #expect(throws: StateDecodingError.invalidValue(offset: 0, what: "8250 IER")) { _ = try Serial8250State.decode(from: &decoder) }
        var badMCR = bytes
        badMCR[2] = 0x20
        decoder = StateDecoder(badMCR)
        #expect(throws: StateDecodingError.invalidValue(offset: 2, what: "8250 MCR")) { _ = try Serial8250State.decode(from: &decoder) }
        var badBool = bytes
        badBool[7] = 2
        decoder = StateDecoder(badBool)
        #expect(throws: StateDecodingError.invalidValue(offset: 7, what: "Bool")) { _ = try Serial8250State.decode(from: &decoder) }
    }
}
