import ControlAPI
import HostSystem
import LeanJSON
import MMDS
import VMM

/// `--metadata FILE` and `--mmds-size-limit BYTES` (Firecracker's flags).
extension VMMArguments {
    static let metadataOptions: [(name: String, value: String, help: String)] = [
        ("metadata", "FILE", "Initial MMDS contents: a JSON document (as PUT /mmds). The guest reads it over HTTP at the MMDS address once mmds-config names an interface."),
        ("mmds-size-limit", "BYTES", "The most bytes of JSON the MMDS data store may hold (default: --http-api-max-payload-size, whose default is \(MetadataService.defaultSizeLimit))."),
    ]

    /// Sets the data store's limit and initial contents.
    static func applyMetadataOptions(_ values: [String: String], to configuration: inout InstanceConfiguration) throws(VMMError) {
        // Firecracker ties the store's limit to the API's body limit unless told otherwise.
        let limitOption = values["mmds-size-limit"] != nil ? "mmds-size-limit" : "http-api-max-payload-size"
        if let text = values[limitOption] {
            guard let limit = Int(text), limit > 0 else {
                throw .invalidConfiguration(field: limitOption, value: text, expected: "a number of bytes, 1 or more")
            }
            configuration.mmds.service.setSizeLimit(limit)
        }
        guard let path = values["metadata"] else { return }
        let bytes: [UInt8]
        do {
            bytes = try OwnedFileDescriptor.readWholeFile(path)
        } catch {
            throw .readFile(role: "metadata file", path: path, cause: error)
        }
        let value: JSONValue
        do {
            value = try JSONParser.parse(bytes)
        } catch {
            throw .invalidConfiguration(field: "metadata", value: path, expected: "a JSON document (\(error))")
        }
        do {
            try configuration.mmds.service.put(value)
        } catch {
            let limit = configuration.mmds.service.sizeLimit
            throw .invalidConfiguration(field: "metadata", value: path, expected: "at most \(limit) bytes of JSON (raise --mmds-size-limit)")
        }
        configuration.mmds.created = true
    }
}
