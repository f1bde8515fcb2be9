import Glibc
import HostSystem
import Synchronization

/// Firecracker's `GuestRegionUffdMapping`: where one guest RAM region is in
/// the VMM's address space and where its contents are in the memory file.
/// A page-fault handler fills a fault at host address A in the region from
/// file offset `offset + (A - baseHostVirtualAddress)`.
public struct GuestRegionUffdMapping: Equatable, Sendable {
    /// The region's first byte in the VMM process (`base_host_virt_addr`).
    public var baseHostVirtualAddress: UInt64
    /// The region's size in bytes (`size`).
    public var size: UInt64
    /// Where the region's contents start in the memory file (`offset`).
    public var offset: UInt64
    /// The region's page size in bytes (`page_size`): 4096 (no huge pages).
    public var pageSize: UInt64

    public init(baseHostVirtualAddress: UInt64, size: UInt64, offset: UInt64, pageSize: UInt64) {
        self.baseHostVirtualAddress = baseHostVirtualAddress
        self.size = size
        self.offset = offset
        self.pageSize = pageSize
    }

    /// The JSON array the VMM sends, exactly as Firecracker's serde writes
    /// it: the fields in declaration order, no spaces, and
    /// `page_size_kib` equal to `page_size` (in bytes: Firecracker's field is
    /// misnamed and kept, deprecated, for older handlers).
    public static func json(_ mappings: [GuestRegionUffdMapping]) -> String {
        let items = mappings.map { mapping in
            "{\"base_host_virt_addr\":\(mapping.baseHostVirtualAddress),\"size\":\(mapping.size),\"offset\":\(mapping.offset),"
                + "\"page_size\":\(mapping.pageSize),\"page_size_kib\":\(mapping.pageSize)}"
        }
        return "[" + items.joined(separator: ",") + "]"
    }
}

/// The Uffd backend's open ends: the userfaultfd guest RAM is registered
/// with (the VMM keeps its copy, as Firecracker does) and the connection to
/// the handler, kept open for the VM's life so the handler sees the VMM go
/// away (it then exits) and never a close racing the mappings message.
public final class PageFaultHandlerConnection: Sendable {
    public let userfaultFD: UserfaultFD
    public let socketPath: String
    let socket = Mutex<UnixStreamSocket?>(nil)

    init(userfaultFD: UserfaultFD, socketPath: String) {
        self.userfaultFD = userfaultFD
        self.socketPath = socketPath
    }

    /// The mappings were sent and the connection is held.
    public var isConnected: Bool { socket.withLock { $0 != nil } }
}

extension GuestMemory {
    /// The page size the Uffd backend reports and registers with (no huge pages).
    public static let uffdPageSize: UInt64 = 4096

    /// Guest RAM for Firecracker's Uffd snapshot backend: anonymous private
    /// memory laid out as `layout` says (the memory file's layout, whose
    /// offsets the handler reads from), a userfaultfd (close-on-exec,
    /// non-blocking, UFFD_FEATURE_EVENT_REMOVE as Firecracker asks) with
    /// every region registered for missing pages, then one message to the
    /// handler listening at `socketPath`: the JSON mappings
    /// (`GuestRegionUffdMapping.json`) with the userfaultfd attached
    /// (SCM_RIGHTS). From then on every first touch of a page, by the guest
    /// through KVM or by the VMM, waits until the handler fills it. On any
    /// error nothing is left (the mappings and descriptors are released).
    public convenience init(userfaultLayout layout: GuestMemoryFileLayout, socketPath: String, trackingDirtyPages: Bool = false) throws(GuestMemoryError) {
        guard !layout.regions.isEmpty else { throw .invalidLayout("the memory file layout has no regions") }
        guard layout.regions.count <= GuestMemoryFileLayout.maximumRegions else {
            throw .invalidLayout("the memory file layout has \(layout.regions.count) regions, more than \(GuestMemoryFileLayout.maximumRegions)")
        }
        for region in layout.regions where region.fileOffset % Self.uffdPageSize != 0 || region.size % Self.uffdPageSize != 0 {
            throw .invalidLayout("region at \(region.start) (\(region.size) bytes at file offset \(region.fileOffset)) is not page aligned")
        }
        let userfaultFD: UserfaultFD
        do {
            userfaultFD = try UserfaultFD.create()
        } catch {
            throw .pageFaultHandler(step: "creating the userfaultfd", path: socketPath, cause: error)
        }
        let connection = PageFaultHandlerConnection(userfaultFD: userfaultFD, socketPath: socketPath)
        try self.init(layout: layout.regions.map { (start: $0.start, size: $0.size, fileOffset: $0.fileOffset) },
                      trackingDirtyPages: trackingDirtyPages, pageFaultHandler: connection) {
            (_, byteCount) throws(SystemCallError) -> MemoryMapping in
            try MemoryMapping(anonymousSize: byteCount)
        }
        for region in regions {
            do {
                // SAFETY: the mapping's address as a number, for the kernel; nothing is dereferenced.
                try userfaultFD.registerMissing(address: UInt64(UInt(bitPattern: region.hostAddress)), length: region.size)
            } catch {
                throw .pageFaultHandler(step: "registering guest RAM at \(region.start) with the userfaultfd", path: socketPath, cause: error)
            }
        }
        let mappings = uffdMappings(layout: layout)
        let socket: UnixStreamSocket
        do {
            socket = try UnixStreamSocket.connect(path: socketPath)
        } catch {
            throw .pageFaultHandler(step: "connecting to its socket", path: socketPath, cause: error)
        }
        do {
            try socket.send(Array(GuestRegionUffdMapping.json(mappings).utf8), attaching: userfaultFD.rawValue)
        } catch {
            throw .pageFaultHandler(step: "sending the guest memory mappings and the userfaultfd", path: socketPath, cause: error)
        }
        connection.socket.withLock { $0 = socket }
    }

    /// The mappings a handler is sent for this memory, in guest-address
    /// order (the init sorted the regions; each keeps its file offset from
    /// `layout`).
    public func uffdMappings(layout: GuestMemoryFileLayout) -> [GuestRegionUffdMapping] {
        regions.map { region in
            // SAFETY: the mapping's address as a number, for the handler; nothing is dereferenced.
            GuestRegionUffdMapping(baseHostVirtualAddress: UInt64(UInt(bitPattern: region.hostAddress)), size: region.size,
                                   offset: layout.regions.first { $0.start == region.start }?.fileOffset ?? 0, pageSize: Self.uffdPageSize)
        }
    }
}
