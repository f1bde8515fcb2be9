/// virtio-mmio devices in the DSDT, the way Linux's virtio_mmio driver finds
/// them through ACPI: one device per register page with _HID "LNRO0005"
/// (the ID in the driver's ACPI match table), its page and its GSI.
///
///     Scope (\_SB) {
///         Device (V000) {
///             Name (_HID, "LNRO0005") Name (_UID, 0) Name (_CCA, One)
///             Name (_CRS, ResourceTemplate () {
///                 Memory32Fixed (ReadWrite, base, length)
///                 Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }
///             })
///         }
///         ...
///     }
///
/// On a hardware-reduced platform Linux numbers IO-APIC interrupts
/// dynamically and maps a GSI only when ACPI names it, so the GSI in a
/// `virtio_mmio.device=` command-line announcement is no usable IRQ number
/// there: this description is what gives a Linux guest working interrupts.
public enum ACPIVirtioMMIO {
    public struct Device: Sendable, Equatable {
        public var base: UInt32
        public var length: UInt32
        public var gsi: UInt32

        public init(base: UInt32, length: UInt32, gsi: UInt32) {
            self.base = base
            self.length = length
            self.gsi = gsi
        }
    }

    /// Hardware ID Linux's virtio_mmio driver matches.
    public static let hardwareID = "LNRO0005"
    /// Four-character device names V000-V999 bound the count.
    public static let maximumDevices = 1000

    /// The AML to append to the DSDT (nothing for no devices).
    public static func aml(_ devices: [Device]) throws(ACPIError) -> [UInt8] {
        guard !devices.isEmpty else { return [] }
        guard devices.count <= maximumDevices else { throw .amlObjectTooLarge(devices.count, max: maximumDevices) }
        var terms: [[UInt8]] = []
        for (index, device) in devices.enumerated() {
            let digits = String(index)
            let name = "V" + String(repeating: "0", count: 3 - digits.count) + digits
            terms.append(try AML.device(name, [
                AML.name("_HID", AML.string(hardwareID)),
                AML.name("_UID", AML.integer(UInt64(index))),
                // Cache-coherent DMA (what a virtio device does).
                AML.name("_CCA", AML.integer(1)),
                AML.name("_CRS", AML.resourceTemplate([
                    AML.Resource.memory32Fixed(base: device.base, length: device.length),
                    AML.Resource.extendedInterrupt([device.gsi]),
                ])),
            ]))
        }
        return try AML.scope("\\_SB", terms)
    }
}
