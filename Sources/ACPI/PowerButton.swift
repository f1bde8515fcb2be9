/// The ACPI power button of a hardware-reduced platform, which has no fixed
/// power-button event: a Generic Event Device (ACPI0013, ACPI 6.5 section
/// 5.6.9) whose interrupt runs `_EVT`, which notifies a control-method power
/// button device (PNP0C0C). Linux's GED driver requests the interrupt and
/// runs `_EVT`; its button driver turns Notify(0x80) into KEY_POWER.
///
///     Scope (\_SB) {
///         Device (PWRB) { Name (_HID, EisaId ("PNP0C0C")) Name (_UID, 0) }
///         Device (GED0) {
///             Name (_HID, "ACPI0013") Name (_UID, 0)
///             Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi } })
///             Method (_EVT, 1) { Notify (\_SB.PWRB, 0x80) }
///         }
///     }
public enum ACPIPowerButton {
    /// Notify value for "button pressed" (ACPI 6.5 table 5.186, device-specific 0x80).
    static let statusChangeNotification: UInt64 = 0x80

    /// The AML to append to the DSDT: the power button and the GED raising
    /// it on `gsi` (edge-triggered, active-high).
    public static func aml(gsi: UInt32) throws(ACPIError) -> [UInt8] {
        try AML.scope("\\_SB", [
            AML.device("PWRB", [
                AML.name("_HID", AML.eisaID("PNP0C0C")),
                AML.name("_UID", AML.integer(0)),
            ]),
            AML.device("GED0", [
                AML.name("_HID", AML.string("ACPI0013")),
                AML.name("_UID", AML.integer(0)),
                AML.name("_CRS", AML.resourceTemplate([AML.Resource.extendedInterrupt([gsi])])),
                AML.method("_EVT", argumentCount: 1, [
                    AML.notify("\\_SB.PWRB", value: statusChangeNotification),
                ]),
            ]),
        ])
    }
}

extension AML {
    static let methodOp: UInt8 = 0x14
    static let notifyOp: UInt8 = 0x86
    /// Largest ArgCount a MethodFlags byte holds (Arg0...Arg6).
    public static let maxMethodArguments = 7

    /// Method(path, argumentCount, NotSerialized){terms}: MethodOp PkgLength
    /// NameString MethodFlags (ArgCount in bits 0-2, SerializeFlag 0, SyncLevel 0) TermList.
    public static func method(_ path: String, argumentCount: Int, _ terms: [[UInt8]]) throws(ACPIError) -> [UInt8] {
        guard (0..<maxMethodArguments).contains(argumentCount) else {
            throw .amlObjectTooLarge(argumentCount, max: maxMethodArguments - 1)
        }
        return try lengthPrefixed([methodOp], nameString(path) + [UInt8(argumentCount)] + terms.joined())
    }

    /// Notify(object, value): NotifyOp SuperName TermArg.
    public static func notify(_ path: String, value: UInt64) throws(ACPIError) -> [UInt8] {
        [notifyOp] + (try nameString(path)) + integer(value)
    }
}
