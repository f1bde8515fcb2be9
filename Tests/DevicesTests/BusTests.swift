import Synchronization
import Testing
@testable import Devices

final class RecordingDevice: BusDevice {
    let writes = Mutex<[(UInt64, UInt64)]>([])
    func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(0x1000 + offset) }
    func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        let value = data.littleEndianValue
        writes.withLock { $0.append((offset, value)) }
    }
}

@Suite("Bus")
struct BusTests {
    @Test("dispatches to the device covering an address with the offset into it")
    func dispatch() throws {
        let bus = Bus()
        let first = RecordingDevice(), second = RecordingDevice()
        try bus.insert(first, base: 0x3F8, length: 8)
        try bus.insert(second, base: 0x60, length: 5)
        var value: UInt16 = 0
        #expect(withUnsafeMutableBytes(of: &value) { bus.read(0x3FA, into: $0) })
        #expect(value == 0x1002)
        let bytes: [UInt8] = [0x34, 0x12]
        #expect(bytes.withUnsafeBytes { bus.write(0x64, from: $0) })
        #expect(second.writes.withLock { $0.map(\.0) } == [4])
        #expect(second.writes.withLock { $0.map(\.1) } == [0x1234])
    }

    @Test("reports unmapped addresses, including just past a range")
    func unmapped() throws {
        let bus = Bus()
        try bus.insert(RecordingDevice(), base: 0x3F8, length: 8)
        var byte: UInt8 = 0
        #expect(!withUnsafeMutableBytes(of: &byte) { bus.read(0x400, into: $0) })
        #expect(!withUnsafeMutableBytes(of: &byte) { bus.read(0x3F7, into: $0) })
        #expect(!withUnsafeMutableBytes(of: &byte) { bus.read(0, into: $0) })
    }

    @Test("refuses overlapping and empty ranges")
    func overlap() throws {
        let bus = Bus()
        try bus.insert(RecordingDevice(), base: 0x600, length: 3)
        #expect(throws: BusError.overlap(base: 0x602, length: 2, existingBase: 0x600)) {
            try bus.insert(RecordingDevice(), base: 0x602, length: 2)
        }
        #expect(throws: BusError.emptyRange(base: 0x700)) { try bus.insert(RecordingDevice(), base: 0x700, length: 0) }
    }
}

@Suite("Power and reset devices")
struct PowerDeviceTests {
    @Test("ACPI sleep control powers off only for SLP_EN with the S5 type")
    func acpiPowerOff() {
        let powerOffs = Atomic<Int>(0), resets = Atomic<Int>(0)
        let device = ACPIPowerDevice(softOffSleepType: 5, resetValue: 1,
                                     onPowerOff: { powerOffs.add(1, ordering: .relaxed) },
                                     onReset: { resets.add(1, ordering: .relaxed) })
        device.writeByte(0, 5 << 2)            // type without SLP_EN
        device.writeByte(0, (3 << 2) | 0x20)   // S3: not supported, ignored
        #expect(powerOffs.load(ordering: .relaxed) == 0)
        device.writeByte(0, 0x34)
        #expect(powerOffs.load(ordering: .relaxed) == 1)
        device.writeByte(2, 0x02)
        #expect(resets.load(ordering: .relaxed) == 0)
        device.writeByte(2, 0x01)
        #expect(resets.load(ordering: .relaxed) == 1)
        #expect(device.readByte(1) == 0)
    }

    @Test("i8042 resets on command 0xFE at the command port only")
    func i8042Reset() {
        let resets = Atomic<Int>(0)
        let device = I8042 { resets.add(1, ordering: .relaxed) }
        device.writeByte(0, 0xFE)
        #expect(resets.load(ordering: .relaxed) == 0)
        device.writeByte(4, 0xFE)
        #expect(resets.load(ordering: .relaxed) == 1)
        #expect(device.readByte(4) == 0, "status: no data pending")
    }
}
