import VMM

/// `PUT /vsock`: Firecracker's `Vsock` (guest_cid, uds_path, and the
/// deprecated vsock_id, accepted and ignored). As in Firecracker the Unix
/// socket is bound by this request, so a path that exists is refused here;
/// a second PUT replaces the device (and removes the first socket).
extension InstanceController {
    static let vsockFields = ["guest_cid", "uds_path", "vsock_id"]

    /// Parses a `Vsock` object (request body or config-file section).
    static func vsockConfiguration(_ fields: JSONFields) throws(APIError) -> (VsockConfiguration, deprecatedID: Bool) {
        try fields.allowOnly(vsockFields)
        let cid = try fields.requiredInteger("guest_cid", in: 3...0xFFFF_FFFE)
        let path = try fields.requiredString("uds_path")
        let deprecatedID = try fields.string("vsock_id") != nil
        let configuration = VsockConfiguration(guestCID: cid, udsPath: path)
        do {
            try configuration.validate()
        } catch {
            throw .badRequest("vsock: \(error)")
        }
        return (configuration, deprecatedID)
    }

    func putVsock(_ body: [UInt8]) throws(APIError) -> HTTPResponse {
        let (configuration, deprecatedID) = try Self.vsockConfiguration(JSONFields(body: body, context: "vsock"))
        try state.withLock { (state) throws(APIError) in
            guard state.phase == .notStarted else { throw .notSupportedAfterStart }
            if state.vsockReservation?.path != configuration.udsPath {
                do {
                    state.vsockReservation = try VsockSocketReservation(path: configuration.udsPath)
                } catch {
                    throw .badRequest("vsock: \(error)")
                }
            }
            state.configuration.base.vsock = configuration
        }
        var response = HTTPResponse.noContent
        if deprecatedID { response.headers.append(("Deprecation", "true")) }
        return response
    }
}
