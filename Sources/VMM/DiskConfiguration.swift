import RateLimiter
import VirtioBlock

/// One virtio-blk disk: an image file (raw or qcow2) or block device, and how to attach it.
public struct DiskConfiguration: Equatable, Sendable {
    /// The image; its size must be a multiple of 512 bytes (0 is a placeholder
    /// disk of capacity 0, to be replaced at run time).
    public var path: String
    /// Names the disk (control API lookups, messages); unique per VM; `disk0`,
    /// `disk1`... by default. Unless `serialFromImage`, it is also what GET_ID
    /// returns (/sys/block/vdX/serial in a Linux guest), so 1 to 20 letters,
    /// digits, '-', '_' or '.'.
    public var id: String
    /// Opened O_RDONLY; the device offers VIRTIO_BLK_F_RO and fails writes with IOERR.
    public var readOnly: Bool
    /// Opened O_DIRECT: no host page cache (unaligned guest buffers are bounced).
    public var directIO: Bool
    /// GET_ID answers with the serial Firecracker derives from the image
    /// (device and inode numbers) instead of `id`: Firecracker drives, whose
    /// drive_id is any length and not the guest-visible serial.
    public var serialFromImage: Bool
    /// Bandwidth and operations limits (Firecracker's `rate_limiter`).
    public var rateLimiter: RateLimiterConfiguration
    /// The image's format; nil probes (qcow2 magic, else raw), which is
    /// only safe for images no guest writes (docs/virtio-blk.md, "Disk formats").
    public var format: DiskFormat?

    public init(path: String, id: String, readOnly: Bool = false, directIO: Bool = false,
                serialFromImage: Bool = false, rateLimiter: RateLimiterConfiguration = .unlimited,
                format: DiskFormat? = nil) {
        self.format = format
        self.path = path
        self.id = id
        self.readOnly = readOnly
        self.directIO = directIO
        self.serialFromImage = serialFromImage
        self.rateLimiter = rateLimiter
    }

    /// The GET_ID serial to fix at creation; nil when derived from each image.
    public var fixedSerial: String? { serialFromImage ? nil : id }

    /// The keys `--disk` accepts, for help and errors.
    public static let keys = ["path", "readonly", "id", "direct", "format"]

    /// Parses `path=PATH[,readonly=on|off][,id=ID][,direct=on|off][,format=raw|qcow2]`
    /// (a bare first item is the path). Without an id the disk gets `disk<index>`.
    public static func parse(_ text: String, index: Int) throws(VMMError) -> DiskConfiguration {
        var path: String?, id: String?, readOnly = false, directIO = false, format: DiskFormat?
        for (position, item) in text.split(separator: ",", omittingEmptySubsequences: false).enumerated() {
            guard let equals = item.firstIndex(of: "=") else {
                guard position == 0, !item.isEmpty else {
                    throw .invalidConfiguration(field: "disk", value: text, expected: "KEY=VALUE items separated by commas, keys \(keys.joined(separator: ", "))")
                }
                path = String(item)
                continue
            }
            let key = String(item[..<equals]), value = String(item[item.index(after: equals)...])
            switch key {
            case "path": path = value
            case "id": id = value
            case "readonly": readOnly = try onOff(value, key: key)
            case "direct": directIO = try onOff(value, key: key)
            case "format": format = try parseFormat(value)
            default:
                throw .invalidConfiguration(field: "disk key", value: key, expected: "one of \(keys.joined(separator: ", ")) (in --disk \(text))")
            }
        }
        guard let path, !path.isEmpty else {
            throw .invalidConfiguration(field: "disk", value: text, expected: "path=PATH naming a raw or qcow2 image")
        }
        return DiskConfiguration(path: path, id: id ?? "disk\(index)", readOnly: readOnly, directIO: directIO, format: format)
    }

    public static func parseFormat(_ value: String) throws(VMMError) -> DiskFormat {
        guard let format = DiskFormat(rawValue: value) else {
            throw .invalidConfiguration(field: "disk format", value: value, expected: "raw or qcow2")
        }
        return format
    }

    static func onOff(_ value: String, key: String) throws(VMMError) -> Bool {
        switch value {
        case "on", "true", "yes": return true
        case "off", "false", "no": return false
        default: throw .invalidConfiguration(field: "disk \(key)", value: value, expected: "on or off")
        }
    }

    /// Checks what does not need the host: ids valid and unique.
    /// (Opening the images, which catches missing files and bad sizes, happens
    /// when the VM is built, still before the guest starts.)
    public static func validate(_ disks: [DiskConfiguration]) throws(VMMError) {
        var seen: Set<String> = []
        for disk in disks {
            guard !disk.path.isEmpty else {
                throw .invalidConfiguration(field: "disk path", value: "(empty)", expected: "the path of a raw image")
            }
            if let serial = disk.fixedSerial {
                do {
                    try VirtioBlockDevice.validate(identifier: serial)
                } catch {
                    throw .invalidConfiguration(field: "disk id", value: disk.id, expected: "1 to 20 letters, digits, '-', '_' or '.'")
                }
            }
            guard !disk.id.isEmpty else {
                throw .invalidConfiguration(field: "disk id", value: "(empty)", expected: "a name for the disk")
            }
            guard seen.insert(disk.id).inserted else {
                throw .invalidConfiguration(field: "disk id", value: disk.id, expected: "an id no other disk has (give each disk its own id=)")
            }
        }
    }
}
