import CKVM
import Glibc

/// An owned file descriptor, closed when the last reference goes away.
public final class OwnedFileDescriptor: Sendable {
    public let rawValue: Int32

    public init(adopting rawValue: Int32) {
        self.rawValue = rawValue
    }

    deinit {
        // close() must not be retried on EINTR on Linux: the fd is gone either way.
        _ = Glibc.close(rawValue)
    }

    /// Opens a path. The corresponding C function is `open`.
    public static func open(
        _ path: String, flags: Int32, mode: mode_t = 0
    ) throws(SystemCallError) -> OwnedFileDescriptor {
        let fd = try systemCall("open \(path)") { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return OwnedFileDescriptor(adopting: fd)
    }

    /// ioctl taking no argument or an integer argument.
    @discardableResult
    public func ioctl(_ name: @autoclosure () -> String, _ request: UInt, value: UInt = 0) throws(SystemCallError) -> Int32 {
        try systemCall(name()) { ckvm_ioctl_value(rawValue, request, value) }
    }

    /// ioctl taking a pointer to a value that the kernel reads and/or writes.
    @discardableResult
    public func ioctl<T>(_ name: @autoclosure () -> String, _ request: UInt, pointer value: inout T) throws(SystemCallError) -> Int32 {
        // SAFETY: the pointer lives only for this call and points at a T the request expects.
        try withUnsafeMutablePointer(to: &value) { (pointer) throws(SystemCallError) -> Int32 in
            try systemCall(name()) { ckvm_ioctl_pointer(rawValue, request, pointer) }
        }
    }

    /// ioctl taking a raw buffer (variable-length kernel structures).
    @discardableResult
    public func ioctl(_ name: @autoclosure () -> String, _ request: UInt, buffer: UnsafeMutableRawPointer) throws(SystemCallError) -> Int32 {
        try systemCall(name()) { ckvm_ioctl_pointer(rawValue, request, buffer) }
    }

    /// Reads up to `buffer.count` bytes. The corresponding C function is `read`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
        try systemCall("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Writes up to `buffer.count` bytes. The corresponding C function is `write`.
    public func write(_ buffer: UnsafeRawBufferPointer) throws(SystemCallError) -> Int {
        try systemCall("write") { Glibc.write(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Writes all of `bytes`, looping over short writes.
    public func writeAll(_ bytes: some Collection<UInt8>) throws(SystemCallError) {
        let array = Array(bytes)
        var offset = 0
        while offset < array.count {
            // SAFETY: the slice stays within `array`, alive for the call.
            let written = array.withUnsafeBytes { raw in
                Result { () throws(SystemCallError) in try write(UnsafeRawBufferPointer(rebasing: raw[offset...])) }
            }
            offset += try written.get()
        }
    }

    /// Reads at an offset. The corresponding C function is `pread`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, atOffset offset: Int64) throws(SystemCallError) -> Int {
        try systemCall("pread") { Glibc.pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// File status. The corresponding C function is `fstat`.
    public func status() throws(SystemCallError) -> stat {
        var result = stat()
        _ = try systemCall("fstat") { Glibc.fstat(rawValue, &result) }
        return result
    }
}

extension OwnedFileDescriptor {
    /// Reads a whole regular file.
    public static func readWholeFile(_ path: String) throws(SystemCallError) -> [UInt8] {
        let file = try OwnedFileDescriptor.open(path, flags: O_RDONLY)
        let size = Int(try file.status().st_size)
        var bytes = [UInt8](repeating: 0, count: size)
        var offset = 0
        while offset < size {
            // SAFETY: the slice stays within `bytes`, alive for the call.
            let result = bytes.withUnsafeMutableBytes { raw in
                Result { () throws(SystemCallError) in
                    try file.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[offset...]), atOffset: Int64(offset))
                }
            }
            let count = try result.get()
            if count == 0 { break }
            offset += count
        }
        return offset == size ? bytes : Array(bytes[..<offset])
    }
}
