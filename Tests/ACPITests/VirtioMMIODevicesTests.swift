import Testing
@testable import ACPI

@Suite("virtio-mmio devices in the DSDT")
struct VirtioMMIODevicesTests {
    @Test("each device is an LNRO0005 with its page (Memory32Fixed) and its GSI (edge, active-high, exclusive)")
    func devices() throws {
        let aml = try ACPIVirtioMMIO.aml([
            ACPIVirtioMMIO.Device(base: 0xD000_1000, length: 0x1000, gsi: 6),
            ACPIVirtioMMIO.Device(base: 0xD000_2000, length: 0x1000, gsi: 7),
        ])
        func count(_ needle: [UInt8]) -> Int {
            guard aml.count >= needle.count else { return 0 }
            return (0...(aml.count - needle.count)).filter { Array(aml[$0..<($0 + needle.count)]) == needle }.count
        }
        #expect(aml.first == 0x10, "a Scope")
        #expect(count(Array("\\_SB_".utf8)) == 1)
        #expect(count([0x5B, 0x82]) == 2, "two Devices")
        #expect(count(Array("V000".utf8)) == 1 && count(Array("V001".utf8)) == 1)
        #expect(count(try AML.string("LNRO0005")) == 2)
        #expect(count(AML.Resource.memory32Fixed(base: 0xD000_1000, length: 0x1000)) == 1)
        #expect(count(AML.Resource.memory32Fixed(base: 0xD000_2000, length: 0x1000)) == 1)
        // Extended Interrupt: consumer | edge, one GSI.
        #expect(count([0x89, 0x06, 0x00, 0x03, 0x01, 6, 0, 0, 0]) == 1)
        #expect(count([0x89, 0x06, 0x00, 0x03, 0x01, 7, 0, 0, 0]) == 1)
        let tables = try ACPITables.build(ACPIConfiguration(cpuCount: 1, additionalDSDTContent: aml),
                                          rsdpAddress: 0xE0000, tablesAddress: 0xE0100, tablesLimit: 0x1FF00)
        #expect(!tables.tables.isEmpty)
    }

    @Test("no devices add nothing; more than V999 names allow is an error")
    func limits() throws {
        #expect(try ACPIVirtioMMIO.aml([]).isEmpty)
        let many = Array(repeating: ACPIVirtioMMIO.Device(base: 0, length: 0x1000, gsi: 6), count: 1001)
        #expect(throws: ACPIError.self) { try ACPIVirtioMMIO.aml(many) }
    }
}
