import Devices
import FuzzSupport

// The guest drives the UART's registers: any sequence of reads and writes of
// any size at any offset, interleaved with host input, must not crash.
final class NullOutput: SerialOutput { func write(_ bytes: [UInt8]) {} }
final class NullInterrupt: InterruptLine { func trigger() {} }

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    let uart = Serial8250(output: NullOutput(), interrupt: NullInterrupt())
    var index = 0
    while index + 2 < bytes.count {
        let operation = bytes[index], offset = UInt64(bytes[index + 1] & 0x0F), value = bytes[index + 2]
        index += 3
        let size = [1, 2, 4, 8, 0][Int(operation >> 5) % 5]
        switch operation & 0x3 {
        case 0:
            var buffer = [UInt8](repeating: 0, count: size)
            buffer.withUnsafeMutableBytes { uart.read(offset: offset, into: $0) }
        case 1:
            let buffer = [UInt8](repeating: value, count: size)
            buffer.withUnsafeBytes { uart.write(offset: offset, from: $0) }
        case 2:
            uart.enqueueInput([UInt8](repeating: value, count: Int(value) * 32))
        default:
            _ = uart.inputSpace
        }
    }
    return 0
}
