/// The hardware-reduced ACPI registers the FADT announces: sleep control
/// (offset 0), sleep status (offset 1) and reset (offset 2). Writing SLP_EN
/// with the S5 sleep type powers the machine off; writing the reset value
/// resets it.
public final class ACPIPowerDevice: BusDevice {
    static let sleepControlOffset: UInt64 = 0
    static let sleepStatusOffset: UInt64 = 1
    static let resetOffset: UInt64 = 2
    static let sleepEnable: UInt8 = 1 << 5

    private let softOffSleepType: UInt8
    private let resetValue: UInt8
    private let onPowerOff: @Sendable () -> Void
    private let onReset: @Sendable () -> Void

    public init(softOffSleepType: UInt8, resetValue: UInt8, onPowerOff: @escaping @Sendable () -> Void, onReset: @escaping @Sendable () -> Void) {
        self.softOffSleepType = softOffSleepType
        self.resetValue = resetValue
        self.onPowerOff = onPowerOff
        self.onReset = onReset
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        // No wake events: status and control read as zero.
        data.storeLittleEndian(0)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        switch offset {
        case Self.sleepControlOffset:
            let sleepType = (value >> 2) & 0x7
            if value & Self.sleepEnable != 0 && sleepType == softOffSleepType { onPowerOff() }
        case Self.resetOffset:
            if value == resetValue { onReset() }
        default:
            break
        }
    }
}
