import Devices
import Synchronization

final class CountingInterrupt: InterruptLine {
    let count = Atomic<Int>(0)
    func trigger() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

final class RecordingOutput: SerialOutput {
    let bytes = Mutex<[UInt8]>([])
    func write(_ bytes: [UInt8]) { self.bytes.withLock { $0.append(contentsOf: bytes) } }
    var recorded: [UInt8] { bytes.withLock { $0 } }
}

extension BusDevice {
    func readByte(_ offset: UInt64) -> UInt8 {
        var value: UInt8 = 0
        withUnsafeMutableBytes(of: &value) { read(offset: offset, into: $0) }
        return value
    }

    func writeByte(_ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { write(offset: offset, from: $0) }
    }
}
