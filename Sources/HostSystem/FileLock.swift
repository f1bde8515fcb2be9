import Glibc

/// A whole-file advisory lock (F_OFD_SETLK), held by an open file
/// description rather than by a process: two descriptors opened separately,
/// even in one process, conflict, and closing an unrelated descriptor of
/// the same file (as POSIX locks would) does not drop it. The lock goes
/// when the last descriptor sharing the description is closed.
public enum FileLockMode: Sendable, Equatable {
    /// A read lock: any number of holders, no exclusive one.
    case shared
    /// A write lock: no other holder of either kind.
    case exclusive
}

/// F_OFD_SETLK's value on Linux; Glibc only exports it with _GNU_SOURCE.
let fileLockSetOpenFileDescription: Int32 = 37

extension OwnedFileDescriptor {
    /// Takes `mode` on the whole file without waiting. Returns false when
    /// another open file description holds a conflicting lock; throws on
    /// any other failure (e.g. a file system without locks).
    public func tryLockWholeFile(_ mode: FileLockMode) throws(SystemCallError) -> Bool {
        var request = flock()
        request.l_type = Int16(mode == .shared ? F_RDLCK : F_WRLCK)
        request.l_whence = Int16(SEEK_SET)
        request.l_start = 0
        request.l_len = 0  // to the end of the file, however it grows
        request.l_pid = 0  // required by OFD locks
        do {
            // SAFETY: the pointer lives only for this call and points at the flock the command expects.
            _ = try withUnsafeMutablePointer(to: &request) { (pointer) throws(SystemCallError) -> Int32 in
                try systemCall("fcntl F_OFD_SETLK") { fcntl(rawValue, fileLockSetOpenFileDescription, pointer) }
            }
            return true
        } catch where error.errno.rawValue == EAGAIN || error.errno.rawValue == EACCES {
            return false
        }
    }
}
