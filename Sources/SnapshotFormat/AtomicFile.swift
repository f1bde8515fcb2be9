import Glibc
import HostSystem

/// Writing a file so that a crash or power loss leaves either the old file
/// or the whole new one, never a torn mix: write a temporary file in the same
/// directory, fsync it, rename it over the path, fsync the directory (so the
/// rename itself is durable).
public enum AtomicFile {
    /// Creates `path` (replacing any file there) with what `body` writes to
    /// the descriptor it is given. Errors name the step in `SystemCallError.call`.
    /// On failure the temporary file is removed and `path` is untouched.
    public static func write<Failure: Error>(
        to path: String, mode: mode_t = 0o600,
        _ body: (OwnedFileDescriptor) throws(Failure) -> Void
    ) throws(AtomicFileError<Failure>) {
        let directory = directoryName(of: path)
        let temporary = "\(path).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let file: OwnedFileDescriptor
        do {
            file = try OwnedFileDescriptor.open(temporary, flags: O_WRONLY | O_CREAT | O_EXCL, mode: mode)
        } catch {
            throw .system(error)
        }
        var renamed = false
        // Best effort: the write's own error is the one to report.
        defer { if !renamed { _ = try? systemCall("unlink \(temporary)") { unlink(temporary) } } }
        do {
            try body(file)
        } catch {
            throw .body(error)
        }
        do {
            _ = try systemCall("fsync \(temporary)") { fsync(file.rawValue) }
            _ = try systemCall("rename \(temporary) to \(path)") { rename(temporary, path) }
            renamed = true
            let directoryHandle = try OwnedFileDescriptor.open(directory, flags: O_RDONLY | O_DIRECTORY)
            _ = try systemCall("fsync \(directory)") { fsync(directoryHandle.rawValue) }
        } catch {
            throw .system(error)
        }
    }

    /// Creates `path` holding `bytes` (see `write(to:mode:_:)`).
    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws(SystemCallError) {
        do {
            try write(to: path, mode: mode) { (file) throws(SystemCallError) in try file.writeAll(bytes) }
        } catch {
            switch error {
            case let .system(cause), let .body(cause): throw cause
            }
        }
    }

    /// The directory part of `path`: "." for a bare name, "/" for "/name".
    static func directoryName(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let directory = path[..<slash]
        return directory.isEmpty ? "/" : String(directory)
    }
}

/// A failed atomic write: a step of the write itself, or the caller's body.
public enum AtomicFileError<Failure: Error>: Error {
    case system(SystemCallError)
    case body(Failure)
}
