import Testing
@testable import ACPI

@Suite("ACPI power button (Generic Event Device)")
struct PowerButtonTests {
    @Test("Method and Notify encode as ACPI 6.5 chapter 20 says")
    func methodAndNotify() throws {
        let notify = try AML.notify("\\_SB.PWRB", value: 0x80)
        #expect(notify == [0x86, 0x5C, 0x2E] + Array("_SB_PWRB".utf8) + [0x0A, 0x80])
        let method = try AML.method("_EVT", argumentCount: 1, [notify])
        // MethodOp, PkgLength (1 + 4 name + 1 flags + 13 body = 19), name, flags (1 argument, not serialized), body.
        #expect(method == [0x14, 19] + Array("_EVT".utf8) + [0x01] + notify)
        #expect(throws: ACPIError.self) { try AML.method("_EVT", argumentCount: 8, []) }
    }

    @Test("the power button AML holds a PNP0C0C device and an ACPI0013 GED with its GSI and _EVT")
    func powerButton() throws {
        let aml = try ACPIPowerButton.aml(gsi: 5)
        func contains(_ needle: [UInt8]) -> Bool {
            aml.count >= needle.count && (0...(aml.count - needle.count)).contains { Array(aml[$0..<($0 + needle.count)]) == needle }
        }
        #expect(aml.first == 0x10, "a Scope")
        #expect(contains(try AML.eisaID("PNP0C0C")))
        #expect(contains(try AML.string("ACPI0013")))
        #expect(contains(AML.Resource.extendedInterrupt([5])))
        #expect(contains(Array("_EVT".utf8) + [0x01, 0x86]))
        // The DSDT still builds and sums to zero with it appended.
        let tables = try ACPITables.build(ACPIConfiguration(cpuCount: 1, additionalDSDTContent: aml),
                                          rsdpAddress: 0xE0000, tablesAddress: 0xE0100, tablesLimit: 0x1FF00)
        #expect(!tables.tables.isEmpty)
    }
}
