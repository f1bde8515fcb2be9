import HostSystem

/// Failures of the KVM layer. Each case names the step and wraps its cause.
public enum KVMError: Error, Sendable, CustomStringConvertible {
    /// /dev/kvm could not be opened (missing module, no permission).
    case openDevice(path: String, cause: SystemCallError)
    /// The kernel speaks a KVM API version other than 12.
    case unsupportedAPIVersion(Int32)
    /// A capability the VMM needs is missing.
    case missingCapability(name: String)
    /// An ioctl or mapping failed; `step` says which.
    case systemCall(step: String, cause: SystemCallError)
    /// A saved state's `part` is not the size this host's KVM reads.
    case stateSizeMismatch(part: String, expected: Int, actual: Int)
    /// A saved state's `part` needs a KVM feature this host lacks.
    case incompatibleState(part: String, reason: String)
    /// KVM_SET_MSRS stopped before the end: MSR `index` was refused.
    case msrRefused(step: String, index: UInt32)

    public var description: String {
        switch self {
        case let .openDevice(path, cause):
            let hint: String
            switch cause.errno {
            case .noEntry: hint = " (is the kvm module loaded? on a VM host, enable nested virtualization)"
            case .permissionDenied: hint = " (add your user to the 'kvm' group or run as root)"
            default: hint = ""
            }
            return "cannot open \(path): \(cause.errno)\(hint)"
        case let .unsupportedAPIVersion(version):
            return "KVM API version \(version) is not supported (need 12)"
        case let .missingCapability(name):
            return "the host's KVM lacks \(name), which Swiftlet needs"
        case let .systemCall(step, cause):
            return "\(step): \(cause.errno)"
        case let .stateSizeMismatch(part, expected, actual):
            return "restoring \(part): the saved state is \(actual) bytes, this host's KVM expects \(expected)"
        case let .incompatibleState(part, reason):
            return "restoring \(part): \(reason)"
        case let .msrRefused(step, index):
            return "\(step): KVM refused MSR 0x\(String(index, radix: 16))"
        }
    }
}

extension OwnedFileDescriptor {
    /// ioctl wrapper that names the step in a KVMError.
    @discardableResult
    func kvmIoctl(_ step: @autoclosure () -> String, _ request: UInt, value: UInt = 0) throws(KVMError) -> Int32 {
        do { return try ioctl(step(), request, value: value) } catch { throw .systemCall(step: step(), cause: error) }
    }

    @discardableResult
    func kvmIoctl<T>(_ step: @autoclosure () -> String, _ request: UInt, pointer: inout T) throws(KVMError) -> Int32 {
        do { return try ioctl(step(), request, pointer: &pointer) } catch { throw .systemCall(step: step(), cause: error) }
    }

    @discardableResult
    func kvmIoctl(_ step: @autoclosure () -> String, _ request: UInt, buffer: UnsafeMutableRawPointer) throws(KVMError) -> Int32 {
        do { return try ioctl(step(), request, buffer: buffer) } catch { throw .systemCall(step: step(), cause: error) }
    }

    /// ioctl on a kernel structure kept as raw bytes (saved state): the
    /// kernel reads and/or writes `bytes`, which the caller sized for it.
    @discardableResult
    func kvmIoctl(_ step: @autoclosure () -> String, _ request: UInt, bytes: inout [UInt8]) throws(KVMError) -> Int32 {
        guard !bytes.isEmpty else { throw .stateSizeMismatch(part: step(), expected: 1, actual: 0) }
        // SAFETY: the buffer is non-empty (so baseAddress exists) and lives through the ioctl.
        return try bytes.withUnsafeMutableBytes { raw in
            Result { () throws(KVMError) -> Int32 in
                guard let base = raw.baseAddress else { throw .stateSizeMismatch(part: step(), expected: 1, actual: 0) }
                return try kvmIoctl(step(), request, buffer: base)
            }
        }.get()
    }
}
