import MMDS
import VirtioNet

/// MMDS on a VM's network interfaces: the process's metadata service, the
/// address the guest reaches it at, and the ids of the interfaces whose
/// frames to that address go to MMDS instead of their tap.
public struct MetadataServiceAttachment: Equatable, Sendable {
    public let service: MetadataService
    public var address: IPv4Address
    public var interfaceIDs: [String]

    public init(service: MetadataService, address: IPv4Address = .defaultMMDS, interfaceIDs: [String]) {
        self.service = service
        self.address = address
        self.interfaceIDs = interfaceIDs
    }

    public static func == (lhs: MetadataServiceAttachment, rhs: MetadataServiceAttachment) -> Bool {
        lhs.service === rhs.service && lhs.address == rhs.address && lhs.interfaceIDs == rhs.interfaceIDs
    }

    /// The interface's tap, behind MMDS if the interface is listed.
    func backend(for interfaceID: String, tap: any TapBackend) throws(VMMError) -> any TapBackend {
        guard interfaceIDs.contains(interfaceID) else { return tap }
        do {
            return try MMDSTap(wrapping: tap, address: address, service: service)
        } catch {
            throw .host(step: "setting up MMDS on network interface \(interfaceID)", cause: error)
        }
    }
}
