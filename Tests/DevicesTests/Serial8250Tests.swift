import Testing
@testable import Devices

@Suite("8250 UART")
struct Serial8250Tests {
    let output = RecordingOutput()
    let interrupt = CountingInterrupt()
    var uart: Serial8250 { Serial8250(output: output, interrupt: interrupt) }

    @Test("transmits written bytes and always reports the transmitter empty")
    func transmit() {
        let uart = self.uart
        for byte in "hi\n".utf8 { uart.writeByte(0, byte) }
        #expect(output.recorded == Array("hi\n".utf8))
        #expect(uart.readByte(5) & 0x60 == 0x60)
        #expect(interrupt.value == 0, "no interrupt without IER")
    }

    @Test("raises a transmit interrupt when THRE interrupts are enabled and after each byte")
    func transmitInterrupt() {
        let uart = self.uart
        uart.writeByte(1, 0x02)
        #expect(interrupt.value == 1)
        #expect(uart.readByte(2) & 0x0F == 0x02, "IIR names THRE")
        #expect(uart.readByte(2) & 0x0F == 0x01, "reading IIR acknowledged it")
        uart.writeByte(0, UInt8(ascii: "a"))
        #expect(interrupt.value == 2)
    }

    @Test("queues input, reports data ready and interrupts when RDA is enabled")
    func receive() {
        let uart = self.uart
        uart.writeByte(1, 0x01)
        #expect(uart.enqueueInput(Array("ok".utf8)) == 2)
        #expect(interrupt.value == 1)
        #expect(uart.readByte(5) & 0x01 == 1)
        #expect(uart.readByte(2) & 0x0F == 0x04)
        #expect(uart.readByte(0) == UInt8(ascii: "o"))
        #expect(uart.readByte(0) == UInt8(ascii: "k"))
        #expect(uart.readByte(5) & 0x01 == 0)
        #expect(uart.readByte(0) == 0, "empty FIFO reads zero")
    }

    @Test("drops input beyond its capacity and flags an overrun")
    func overrun() {
        let uart = self.uart
        let accepted = uart.enqueueInput([UInt8](repeating: 0x41, count: Serial8250.inputCapacity + 10))
        #expect(accepted == Serial8250.inputCapacity)
        #expect(uart.inputSpace == 0)
        #expect(uart.readByte(5) & 0x02 == 0x02)
        #expect(uart.readByte(5) & 0x02 == 0, "reading LSR clears the overrun")
    }

    @Test("divisor latch access redirects registers 0 and 1")
    func divisorLatch() {
        let uart = self.uart
        uart.writeByte(3, 0x80)
        uart.writeByte(0, 0x01)
        uart.writeByte(1, 0x00)
        #expect(uart.readByte(0) == 0x01)
        uart.writeByte(3, 0x03)
        #expect(output.recorded.isEmpty, "divisor writes are not output")
        #expect(uart.readByte(1) == 0)
    }

    @Test("loopback mode reflects modem control in modem status, as Linux's probe expects")
    func loopback() {
        let uart = self.uart
        uart.writeByte(4, 0x10 | 0x0A)   // loop | OUT2 | RTS
        #expect(uart.readByte(6) & 0xF0 == 0x90)  // DCD | CTS
        uart.writeByte(0, 0x55)
        #expect(output.recorded.isEmpty)
        #expect(uart.readByte(0) == 0x55)
        uart.writeByte(4, 0x08)
        #expect(uart.readByte(6) == 0xB0)
    }

    @Test("a guest looping bytes back forever keeps the receive FIFO's storage at its fixed capacity")
    func loopbackStaysBounded() {
        let uart = self.uart
        uart.writeByte(4, 0x10)
        for round in 0..<50_000 {
            uart.writeByte(0, UInt8(truncatingIfNeeded: round))
            #expect(uart.readByte(0) == UInt8(truncatingIfNeeded: round))
        }
        #expect(uart.state.withLock { $0.input.capacity } <= Serial8250.inputCapacity)
        // Host input after wrapping around still arrives in order.
        uart.writeByte(4, 0x08)
        #expect(uart.enqueueInput(Array("wrap".utf8)) == 4)
        #expect((0..<4).map { _ in uart.readByte(0) } == Array("wrap".utf8))
    }

    @Test("a loopback write into a full receive FIFO is dropped and sets the overrun bit in LSR")
    func loopbackOverrun() {
        let uart = self.uart
        uart.writeByte(4, 0x10)
        for index in 0..<Serial8250.inputCapacity { uart.writeByte(0, UInt8(truncatingIfNeeded: index)) }
        #expect(uart.readByte(5) & 0x02 == 0, "full but not overrun yet")
        uart.writeByte(0, 0xEE)
        #expect(uart.readByte(5) & 0x03 == 0x03, "data ready and overrun")
        #expect(uart.readByte(5) & 0x02 == 0, "reading LSR clears the overrun")
        #expect((0..<Serial8250.inputCapacity).allSatisfy { uart.readByte(0) == UInt8(truncatingIfNeeded: $0) })
        #expect(uart.readByte(5) & 0x01 == 0, "the dropped byte never arrives")
    }

    @Test("scratch register holds a value; unknown sizes and offsets do not crash")
    func scratchAndOddAccesses() {
        let uart = self.uart
        uart.writeByte(7, 0xA5)
        #expect(uart.readByte(7) == 0xA5)
        uart.write(offset: 0, from: UnsafeRawBufferPointer(start: nil, count: 0))
        var wide: UInt32 = 0
        withUnsafeMutableBytes(of: &wide) { uart.read(offset: 5, into: $0) }
        #expect(wide == 0x60)
        #expect(uart.readByte(99) == 0xFF)
    }
}
