import GuestMemory
import LeanJSON

/// One guest RAM region as the VMM's handshake describes it: the VMM's own
/// type (Firecracker's `GuestRegionUffdMapping`), read here from JSON.
public typealias UffdRegionMapping = GuestRegionUffdMapping

extension GuestRegionUffdMapping {
    /// The first address past the region (checked not to wrap when parsed).
    public var end: UInt64 { baseHostVirtualAddress &+ size }

    public func contains(_ address: UInt64) -> Bool { address >= baseHostVirtualAddress && address < end }
}

/// The mappings message: a JSON array of `GuestRegionUffdMapping` objects,
/// parsed and checked without trusting any of it.
public enum UffdMappings {
    /// A message larger than this is refused (Firecracker's is ~120 bytes per region).
    public static let maximumMessageSize = 64 * 1024
    /// More regions than any VMM sends.
    public static let maximumRegions = 64
    /// Page sizes a region may have: 4 KiB up to 1 GiB, powers of two.
    public static let pageSizes: ClosedRange<UInt64> = 4096...(1 << 30)

    /// Parses `bytes` into mappings in address order. Requires, per element,
    /// `base_host_virt_addr`, `size`, `offset` and `page_size` as unsigned
    /// integers (`page_size_kib`, which Firecracker also sends, and fields a
    /// later VMM may add are ignored, as serde does); refuses an empty or
    /// oversized list, page sizes that are not a power of two in
    /// `pageSizes`, a base or size not a multiple of the page size, empty
    /// regions, ranges wrapping past 2^64, and overlapping regions.
    public static func parse(_ bytes: [UInt8]) throws(UffdHandlerError) -> [UffdRegionMapping] {
        guard bytes.count <= maximumMessageSize else {
            throw .malformedMappings("\(bytes.count) bytes, more than the \(maximumMessageSize) allowed")
        }
        let document: JSONValue
        do {
            document = try JSONParser.parse(bytes)
        } catch {
            throw .malformedMappings("not JSON: \(error)")
        }
        guard case let .array(elements) = document else { throw .malformedMappings("expected an array, got \(document.typeName)") }
        guard !elements.isEmpty else { throw .malformedMappings("no regions") }
        guard elements.count <= maximumRegions else {
            throw .malformedMappings("\(elements.count) regions, more than \(maximumRegions)")
        }
        var mappings: [UffdRegionMapping] = []
        for (index, element) in elements.enumerated() {
            guard case .object = element else { throw .malformedMappings("region \(index) is \(element.typeName), not an object") }
            func field(_ name: String) throws(UffdHandlerError) -> UInt64 {
                guard let value = element[name] else { throw .malformedMappings("region \(index) has no `\(name)`") }
                guard let number = value.unsignedValue else {
                    throw .malformedMappings("region \(index)'s `\(name)` is not an unsigned 64-bit integer")
                }
                return number
            }
            let mapping = UffdRegionMapping(baseHostVirtualAddress: try field("base_host_virt_addr"), size: try field("size"),
                                            offset: try field("offset"), pageSize: try field("page_size"))
            let page = mapping.pageSize
            guard pageSizes.contains(page), page & (page - 1) == 0 else {
                throw .malformedMappings("region \(index)'s page size \(page) is not a power of two from 4096 to 1 GiB")
            }
            guard mapping.size > 0 else { throw .malformedMappings("region \(index) is empty") }
            guard mapping.baseHostVirtualAddress % page == 0, mapping.size % page == 0 else {
                throw .malformedMappings("region \(index) (\(mapping.size) bytes at 0x\(String(mapping.baseHostVirtualAddress, radix: 16))) is not aligned to its \(page)-byte pages")
            }
            guard !mapping.baseHostVirtualAddress.addingReportingOverflow(mapping.size).overflow,
                  !mapping.offset.addingReportingOverflow(mapping.size).overflow else {
                throw .malformedMappings("region \(index) wraps past 2^64")
            }
            mappings.append(mapping)
        }
        mappings.sort { $0.baseHostVirtualAddress < $1.baseHostVirtualAddress }
        for (previous, next) in zip(mappings, mappings.dropFirst()) where next.baseHostVirtualAddress < previous.end {
            throw .malformedMappings("regions at 0x\(String(previous.baseHostVirtualAddress, radix: 16)) and 0x\(String(next.baseHostVirtualAddress, radix: 16)) overlap")
        }
        return mappings
    }

    /// Refuses a mapping whose contents would lie past the end of a memory
    /// file of `fileSize` bytes.
    public static func check(_ mappings: [UffdRegionMapping], fileSize: UInt64) throws(UffdHandlerError) {
        for (index, mapping) in mappings.enumerated() where mapping.offset + mapping.size > fileSize {
            throw .mappingOutsideFile(index: index, offset: mapping.offset, size: mapping.size, fileSize: fileSize)
        }
    }

    /// Where a fault at `address` is served from: the page's start (aligned
    /// to its region's page size), its length, and the file offset of its
    /// contents (`offset + (page - base)`); nil outside every region.
    public static func source(of address: UInt64, in mappings: [UffdRegionMapping]) -> (page: UInt64, length: UInt64, fileOffset: UInt64)? {
        guard let region = mappings.first(where: { $0.contains(address) }) else { return nil }
        let page = address & ~(region.pageSize - 1)
        return (page, region.pageSize, region.offset + (page - region.baseHostVirtualAddress))
    }
}
