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
}
