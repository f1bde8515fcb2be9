import GuestMemory
import HostSystem
import Testing
@testable import UffdHandler

@Suite("Uffd mappings message")
struct UffdMappingsTests {
    static let two = [
        GuestRegionUffdMapping(baseHostVirtualAddress: 0x7f00_0000_0000, size: 0xC000_0000, offset: 0, pageSize: 4096),
        GuestRegionUffdMapping(baseHostVirtualAddress: 0x7e00_0000_0000, size: 0x4000_0000, offset: 0xC000_0000, pageSize: 4096),
    ]

    @Test("the VMM's message is Firecracker's serde JSON: the five fields in order, page_size_kib equal to page_size in bytes")
    func vmmJSON() {
        let one = [GuestRegionUffdMapping(baseHostVirtualAddress: 140_737_488_355_328, size: 67_108_864, offset: 0, pageSize: 4096)]
        #expect(GuestRegionUffdMapping.json(one)
                == #"[{"base_host_virt_addr":140737488355328,"size":67108864,"offset":0,"page_size":4096,"page_size_kib":4096}]"#)
        #expect(GuestRegionUffdMapping.json(Self.two) == "[" + [
            #"{"base_host_virt_addr":139637976727552,"size":3221225472,"offset":0,"page_size":4096,"page_size_kib":4096}"#,
            #"{"base_host_virt_addr":138538465099776,"size":1073741824,"offset":3221225472,"page_size":4096,"page_size_kib":4096}"#,
        ].joined(separator: ",") + "]")
    }

    @Test("the handler parses the VMM's message back (in address order), and Firecracker's test message without page_size_kib")
    func parseRoundTrip() throws {
        let parsed = try UffdMappings.parse(Array(GuestRegionUffdMapping.json(Self.two).utf8))
        #expect(parsed == [
            UffdRegionMapping(baseHostVirtualAddress: 0x7e00_0000_0000, size: 0x4000_0000, offset: 0xC000_0000, pageSize: 4096),
            UffdRegionMapping(baseHostVirtualAddress: 0x7f00_0000_0000, size: 0xC000_0000, offset: 0, pageSize: 4096),
        ])
        // Firecracker's uffd_utils test sends exactly this (no page_size_kib); extra fields are ignored as serde does.
        let firecracker = try UffdMappings.parse(Array(#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"later":true}]"#.utf8))
        #expect(firecracker == [UffdRegionMapping(baseHostVirtualAddress: 4096, size: 4096, offset: 0, pageSize: 4096)])
        let spaced = try UffdMappings.parse(Array(" [ { \"size\" : 4194304, \"offset\" : 4096, \"page_size\" : 2097152, \"base_host_virt_addr\" : 2097152 } ] ".utf8))
        #expect(spaced.first?.pageSize == 2_097_152)
    }

    @Test("bad messages are refused with a reason, never a trap")
    func refusals() {
        let cases: [(String, String)] = [
            ("", "not JSON"),
            ("[{\"base_host_virt_addr\":4096", "not JSON"),
            ("{}", "expected an array"),
            ("[]", "no regions"),
            ("[1]", "region 0 is a number"),
            (#"[{"size":4096,"offset":0,"page_size":4096}]"#, "has no `base_host_virt_addr`"),
            (#"[{"base_host_virt_addr":-4096,"size":4096,"offset":0,"page_size":4096}]"#, "not an unsigned 64-bit integer"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":"4096"}]"#, "`page_size` is not an unsigned"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":18446744073709551616}]"#, "`page_size` is not an unsigned"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4097}]"#, "not a power of two"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":0}]"#, "not a power of two"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":2048}]"#, "not a power of two"),
            (#"[{"base_host_virt_addr":4096,"size":0,"offset":0,"page_size":4096}]"#, "is empty"),
            (#"[{"base_host_virt_addr":4095,"size":4096,"offset":0,"page_size":4096}]"#, "not aligned"),
            (#"[{"base_host_virt_addr":4096,"size":100,"offset":0,"page_size":4096}]"#, "not aligned"),
            (#"[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0,"page_size":4096}]"#, "wraps past 2^64"),
            (#"[{"base_host_virt_addr":4096,"size":4096,"offset":18446744073709551615,"page_size":4096}]"#, "wraps past 2^64"),
            (#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096}]"#, "overlap"),
        ]
        for (text, reason) in cases {
            do throws(UffdHandlerError) {
                _ = try UffdMappings.parse(Array(text.utf8))
                Issue.record("accepted: \(text)")
            } catch {
                guard case let .malformedMappings(message) = error else { Issue.record("\(text): \(error)"); continue }
                #expect(message.contains(reason), "\(text): \(message)")
            }
        }
        let many = "[" + Array(repeating: #"{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}"#, count: 65).joined(separator: ",") + "]"
        #expect(throws: UffdHandlerError.malformedMappings("65 regions, more than 64")) { try UffdMappings.parse(Array(many.utf8)) }
        let huge = [UInt8](repeating: 0x20, count: UffdMappings.maximumMessageSize + 1)
        #expect(throws: UffdHandlerError.malformedMappings("65537 bytes, more than the 65536 allowed")) { try UffdMappings.parse(huge) }
    }

    static func source(_ address: UInt64, _ mappings: [UffdRegionMapping]) -> [UInt64]? {
        UffdMappings.source(of: address, in: mappings).map { [$0.page, $0.length, $0.fileOffset] }
    }

    @Test("a fault is served from offset + (page - base), aligned to its region's page size; outside every region there is no source")
    func faultSource() throws {
        let mappings = [
            UffdRegionMapping(baseHostVirtualAddress: 0x10_0000, size: 0x4000, offset: 0x2000, pageSize: 4096),
            UffdRegionMapping(baseHostVirtualAddress: 0x4000_0000, size: 0x40_0000, offset: 0x6000, pageSize: 0x20_0000),
        ]
        #expect(Self.source(0x10_0000, mappings) == [0x10_0000, 4096, 0x2000])
        #expect(Self.source(0x10_3FFF, mappings) == [0x10_3000, 4096, 0x5000])
        #expect(Self.source(0x4030_0123, mappings) == [0x4020_0000, 0x20_0000, 0x20_6000])
        #expect(UffdMappings.source(of: 0x10_4000, in: mappings) == nil)
        #expect(UffdMappings.source(of: 0xFFFF, in: mappings) == nil)
        #expect(throws: UffdHandlerError.mappingOutsideFile(index: 1, offset: 0x6000, size: 0x40_0000, fileSize: 0x40_0000)) {
            try UffdMappings.check(mappings, fileSize: 0x40_0000)
        }
        try UffdMappings.check(mappings, fileSize: 0x40_6000)
    }
}
