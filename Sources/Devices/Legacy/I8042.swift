/// The i8042 keyboard controller, reduced to what guests use without a
/// keyboard: status reads that say "nothing pending", and the CPU reset line
/// (command 0xFE), which Linux and firmware use to reboot.
public final class I8042: BusDevice {
    static let dataOffset: UInt64 = 0          // port 0x60
    static let commandOffset: UInt64 = 4       // port 0x64
    static let resetCommand: UInt8 = 0xFE

    private let onReset: @Sendable () -> Void

    /// `onReset` runs when the guest pulses the reset line.
    public init(onReset: @escaping @Sendable () -> Void) {
        self.onReset = onReset
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        // Status 0: output buffer empty, input buffer empty. Data reads 0.
        data.storeLittleEndian(0)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        if offset == Self.commandOffset, data.first == Self.resetCommand { onReset() }
    }
}
