import FuzzSupport
import GuestMemory
import UffdHandler

// swiftlet-uffd-handler reads its mappings from whoever connects to its
// socket: any bytes parse into checked mappings or fail with one
// UffdHandlerError, never crash. Parsed mappings are sorted, page aligned,
// non-overlapping and not wrapping; every fault address inside one maps to
// a page inside it and a file offset inside the mapping's file range; and
// the VMM's own JSON of them parses back to the same mappings.
runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard let mappings = try? UffdMappings.parse(bytes) else { return 0 }
    precondition(!mappings.isEmpty && mappings.count <= UffdMappings.maximumRegions)
    for (previous, next) in zip(mappings, mappings.dropFirst()) {
        precondition(previous.end <= next.baseHostVirtualAddress, "overlapping mappings accepted")
    }
    for mapping in mappings {
        precondition(mapping.size > 0 && mapping.size % mapping.pageSize == 0 && mapping.baseHostVirtualAddress % mapping.pageSize == 0)
        for probe in [mapping.baseHostVirtualAddress, mapping.baseHostVirtualAddress + mapping.size / 2, mapping.end - 1] {
            guard let source = UffdMappings.source(of: probe, in: mappings) else { preconditionFailure("an address inside a mapping has no source") }
            precondition(source.page <= probe && probe < source.page + source.length && source.page >= mapping.baseHostVirtualAddress)
            precondition(source.fileOffset >= mapping.offset && source.fileOffset + source.length <= mapping.offset + mapping.size)
        }
    }
    let json = GuestRegionUffdMapping.json(mappings.map {
        GuestRegionUffdMapping(baseHostVirtualAddress: $0.baseHostVirtualAddress, size: $0.size, offset: $0.offset, pageSize: $0.pageSize)
    })
    precondition((try? UffdMappings.parse(Array(json.utf8))) == mappings, "the VMM's JSON of parsed mappings does not parse back")
    return 0
}
