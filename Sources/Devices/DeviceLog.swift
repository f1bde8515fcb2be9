import Glibc

/// Writes one line to stderr (unbuffered): how devices report a guest's
/// protocol violations without stopping the VM.
public enum DeviceLog {
    public static let standardError: @Sendable (String) -> Void = { message in
        let line = Array((message + "\n").utf8)
        // SAFETY: the pointer is used only for this call, within the array.
        line.withUnsafeBytes { raw in _ = Glibc.write(STDERR_FILENO, raw.baseAddress, raw.count) }
    }
}
