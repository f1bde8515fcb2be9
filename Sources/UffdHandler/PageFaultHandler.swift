import Glibc
import HostSystem

/// A page-fault handler for Firecracker's Uffd snapshot backend, as
/// Firecracker's example handlers: it listens on a Unix socket, accepts one
/// VMM, takes its one message (the JSON mappings with the userfaultfd
/// attached), then fills every missing page the VMM's guest touches with
/// UFFDIO_COPY from the memory file, until the VMM hangs up.
public final class PageFaultHandler {
    /// What a run did.
    public struct Statistics: Equatable, Sendable {
        /// Pages filled from the memory file.
        public var pagesCopied = 0
        /// Faults whose page was already present (EEXIST: another fault filled it).
        public var alreadyPresent = 0
        /// Copies retried after EAGAIN (the address space was changing).
        public var retries = 0
        /// UFFD_EVENT_REMOVE / UNMAP events (their ranges are unregistered).
        public var removals = 0
        /// Faults outside every mapping, and event kinds not served.
        public var ignoredEvents = 0
        public init() {}
    }

    public let memoryPath: String
    let memory: MemoryMapping
    public let memorySize: UInt64
    /// Where diagnostics go (one line each); nil: nowhere.
    let log: (@Sendable (String) -> Void)?

    /// Opens and maps the memory file read-only in effect (MAP_PRIVATE, never written).
    public init(memoryPath: String, log: (@Sendable (String) -> Void)? = nil) throws(UffdHandlerError) {
        self.memoryPath = memoryPath
        self.log = log
        let file: OwnedFileDescriptor
        let status: stat
        do {
            file = try OwnedFileDescriptor.open(memoryPath, flags: O_RDONLY | O_NONBLOCK)
            status = try file.status()
        } catch {
            throw .memoryFile(path: memoryPath, cause: error)
        }
        guard status.st_mode & S_IFMT == S_IFREG else { throw .memoryFileUnusable(path: memoryPath, reason: "is not a regular file") }
        guard status.st_size > 0, let size = Int(exactly: status.st_size) else {
            throw .memoryFileUnusable(path: memoryPath, reason: "is empty")
        }
        memorySize = UInt64(size)
        do {
            memory = try MemoryMapping(privateFile: file, size: size, offset: 0)
        } catch {
            throw .memoryFile(path: memoryPath, cause: error)
        }
    }

    /// Binds `socketPath` (which must not exist) and waits for one VMM. The
    /// socket file is removed once the VMM is connected (one VMM per run)
    /// or when listening fails after binding.
    public func accept(socketPath: String) throws(UffdHandlerError) -> UnixStreamSocket {
        let listener: UnixStreamSocket
        do {
            listener = try UnixStreamSocket.listen(path: socketPath)
        } catch {
            throw .listen(path: socketPath, cause: error)
        }
        defer { unlink(socketPath) }
        do {
            return try listener.accept()
        } catch {
            throw .accept(path: socketPath, cause: error)
        }
    }

    /// Reads the VMM's message: bytes until they parse as the mappings JSON
    /// (Firecracker sends it in one sendmsg, but a stream may split it), at
    /// most `UffdMappings.maximumMessageSize` bytes and `seconds` long; the
    /// userfaultfd comes with the first bytes. Refuses a message without a
    /// descriptor, or whose mappings read past the memory file.
    public func handshake(_ connection: UnixStreamSocket, seconds: Int32 = 10) throws(UffdHandlerError) -> ([UffdRegionMapping], UserfaultFD) {
        var bytes: [UInt8] = []
        var userfaultFD: UserfaultFD?
        var lastError = UffdHandlerError.noMessage(reason: "nothing received")
        let deadline = Self.now() + Int64(seconds) * 1000
        while bytes.count < UffdMappings.maximumMessageSize {
            let remaining = deadline - Self.now()
            guard remaining > 0 else { throw .noMessage(reason: "nothing parseable within \(seconds) s (\(bytes.count) bytes; last: \(lastError))") }
            guard try Self.wait(for: connection.descriptor.rawValue, milliseconds: Int32(clamping: remaining)) else { continue }
            let received: UnixStreamSocket.Received
            do {
                received = try connection.receive(maximumBytes: UffdMappings.maximumMessageSize - bytes.count, maximumDescriptors: 1)
            } catch {
                throw .receive(cause: error)
            }
            guard !received.bytes.isEmpty else {
                throw .noMessage(reason: "the VMM closed the connection after \(bytes.count) bytes")
            }
            if userfaultFD == nil, let descriptor = received.descriptors.first { userfaultFD = UserfaultFD(adopting: descriptor) }
            bytes += received.bytes
            do throws(UffdHandlerError) {
                let mappings = try UffdMappings.parse(bytes)
                guard let userfaultFD else { throw .noDescriptor(bytes: bytes.count) }
                try UffdMappings.check(mappings, fileSize: memorySize)
                return (mappings, userfaultFD)
            } catch {
                // Incomplete JSON waits for more bytes; anything else is final.
                guard case let .malformedMappings(reason) = error, reason.hasPrefix("not JSON") else { throw error }
                lastError = error
            }
        }
        throw lastError
    }

    /// Serves the userfaultfd until the VMM hangs up (end of file or hang-up
    /// on `connection`, or the userfaultfd's), then returns what it did.
    /// Bytes the VMM sends later are read and dropped (with any descriptor).
    public func serve(_ mappings: [UffdRegionMapping], userfaultFD: UserfaultFD, connection: UnixStreamSocket) throws(UffdHandlerError) -> Statistics {
        var statistics = Statistics()
        var pollSet = [
            pollfd(fd: connection.descriptor.rawValue, events: Int16(POLLIN) | Self.peerHungUp, revents: 0),
            pollfd(fd: userfaultFD.rawValue, events: Int16(POLLIN), revents: 0),
        ]
        while true {
            // SAFETY: poll reads and writes the two pollfds of the array during the call.
            let outcome: Result<Int32, SystemCallError> = pollSet.withUnsafeMutableBufferPointer { buffer in
                Result { () throws(SystemCallError) in try systemCall("poll") { poll(buffer.baseAddress, nfds_t(buffer.count), -1) } }
            }
            if case let .failure(error) = outcome { throw .poll(cause: error) }
            let hangUp = Int16(POLLHUP) | Int16(POLLERR) | Int16(POLLNVAL)
            if pollSet[1].revents & Int16(POLLIN) != 0 {
                do {
                    try drain(mappings, userfaultFD, &statistics)
                } catch {
                    // ESRCH: the VMM's address space is gone (it is exiting): done, as on a hang-up.
                    if case let .resolve(_, cause) = error, cause.errno.rawValue == ESRCH { return statistics }
                    throw error
                }
            }
            if pollSet[1].revents & hangUp != 0 { return statistics }
            if pollSet[0].revents & (Int16(POLLIN) | Self.peerHungUp | hangUp) != 0 {
                // More from the VMM (never expected) is dropped; nothing means it is gone.
                let extra = try? connection.receive(maximumBytes: 4096, maximumDescriptors: 4)
                guard let extra, !extra.bytes.isEmpty else { return statistics }
                log?("ignored \(extra.bytes.count) more bytes from the VMM")
            }
        }
    }

    /// Reads every pending event and serves it. A fault whose copy meets
    /// EAGAIN (a removal is pending, which must be read first) is kept and
    /// retried after reading more, as Firecracker's example handler does.
    func drain(_ mappings: [UffdRegionMapping], _ userfaultFD: UserfaultFD, _ statistics: inout Statistics) throws(UffdHandlerError) {
        var deferred: [UInt64] = []
        // Bounded: each round reads at most this many events; a new round
        // starts only while faults wait for a pending removal.
        let batch = 4096
        repeat {
            var faults = deferred
            deferred = []
            var removals: [(UInt64, UInt64)] = []
            var read = 0
            while read < batch {
                let event: UserfaultEvent?
                do {
                    event = try userfaultFD.readEvent()
                } catch {
                    throw .readEvent(cause: error)
                }
                guard let event else { break }
                read += 1
                switch event {
                case let .pageFault(address, _): faults.append(address)
                case let .remove(start, end), let .unmap(start, end): removals.append((start, end))
                case let .fork(descriptor):
                    // Not requested by Swiftlet's VMM; never keep a child's userfaultfd open.
                    close(descriptor)
                    statistics.ignoredEvents += 1
                case .remap, .unknown:
                    statistics.ignoredEvents += 1
                }
            }
            // Removed ranges stop being served from the file: unregistered,
            // the kernel gives zero pages there, as Firecracker's example does.
            for (start, end) in removals where end > start {
                statistics.removals += 1
                try? userfaultFD.unregister(address: start, length: end - start)
            }
            // Faults that met EAGAIN again with nothing new read: give the
            // pending removal time to show up rather than spin.
            if read == 0 && !faults.isEmpty && removals.isEmpty { usleep(1000) }
            for address in faults {
                switch try serveFault(address, mappings, userfaultFD) {
                case .resolved?: statistics.pagesCopied += 1
                case .alreadyPresent?: statistics.alreadyPresent += 1
                case .retry?:
                    statistics.retries += 1
                    deferred.append(address)
                case nil:
                    statistics.ignoredEvents += 1
                    // Bounded: a confused VMM must not flood the log.
                    if statistics.ignoredEvents <= 10 { log?("page fault at 0x\(String(address, radix: 16)) is outside every mapping") }
                }
            }
        } while !deferred.isEmpty
    }

    /// Copies the page holding `address` from the memory file; nil if no
    /// mapping holds it.
    func serveFault(_ address: UInt64, _ mappings: [UffdRegionMapping], _ userfaultFD: UserfaultFD) throws(UffdHandlerError) -> UserfaultFD.Resolution? {
        guard let source = UffdMappings.source(of: address, in: mappings),
              source.fileOffset + source.length <= memorySize else { return nil }
        do {
            // SAFETY: check() and the guard above keep [fileOffset, fileOffset + length) inside the file's mapping.
            return try userfaultFD.copy(to: source.page, from: UnsafeRawPointer(memory.address + Int(source.fileOffset)), length: source.length)
        } catch {
            throw .resolve(address: source.page, cause: error)
        }
    }

    /// Writes `text` to standard error (best effort: a closed stderr is ignored).
    public static func writeStandardError(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            // SAFETY: write reads the slice's bytes during the call only.
            let written = bytes.withUnsafeBytes { raw in try? systemCall("write") { write(STDERR_FILENO, raw.baseAddress, raw.count) } }
            guard let written, written > 0 else { return }
            bytes = bytes.dropFirst(written)
        }
    }

    /// POLLRDHUP (the peer shut its side), which Swift's Glibc does not export.
    static let peerHungUp: Int16 = 0x2000

    /// Waits until `descriptor` is readable or hung up (true), or `milliseconds` pass (false).
    static func wait(for descriptor: Int32, milliseconds: Int32) throws(UffdHandlerError) -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        do {
            // SAFETY: poll reads and writes the one pollfd during the call.
            return try systemCall("poll") { poll(&entry, 1, milliseconds) } > 0
        } catch {
            throw .poll(cause: error)
        }
    }

    /// CLOCK_MONOTONIC in milliseconds.
    static func now() -> Int64 {
        var time = timespec()
        // SAFETY: clock_gettime writes one timespec.
        _ = try? systemCall("clock_gettime") { clock_gettime(CLOCK_MONOTONIC, &time) }
        return Int64(time.tv_sec) * 1000 + Int64(time.tv_nsec) / 1_000_000
    }

    /// The whole run: accept one VMM on `socketPath`, the handshake, serve
    /// until it hangs up. With `killPeerOnError` (the executable), a failure
    /// after the VMM connected kills it (SIGKILL, its pid from SO_PEERCRED),
    /// as Firecracker's example handlers do: its guest would otherwise wait
    /// forever for pages nobody serves.
    public func run(socketPath: String, killPeerOnError: Bool = false) throws(UffdHandlerError) -> Statistics {
        let connection = try accept(socketPath: socketPath)
        do {
            let (mappings, userfaultFD) = try handshake(connection)
            log?("serving \(mappings.count) region(s) for VMM pid \(connection.peerProcessID().map(String.init) ?? "?") from \(memoryPath)")
            return try serve(mappings, userfaultFD: userfaultFD, connection: connection)
        } catch {
            if killPeerOnError, let peer = connection.peerProcessID(), peer > 0, peer != getpid() {
                log?("killing VMM pid \(peer): \(error)")
                _ = try? systemCall("kill \(peer)") { kill(peer, SIGKILL) }
            }
            throw error
        }
    }
}
