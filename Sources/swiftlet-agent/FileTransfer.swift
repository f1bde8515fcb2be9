#if canImport(AgentProtocol)
import AgentProtocol
#endif
import CAgentSys

/// put-file and get-file (docs/agent.md).
enum FileTransfer {
    /// Receives `size` bytes into a temporary file next to `path`, then
    /// fsyncs and renames it over `path`: a failed transfer leaves the old
    /// file as it was.
    static func put(path: String, mode: UInt32, size: UInt64, on connection: Connection) throws(AgentError) {
        guard !path.isEmpty else { throw .refused(.badRequest, "put-file: empty path") }
        let temporary = path + ".swiftlet-agent-\(getpid())-\(agent_monotonic_ms())"
        let fd = Int32(try systemCall("create \(temporary)") {
            Int(agent_open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600))
        })
        var completed = false
        defer {
            close(fd)
            if !completed { unlink(temporary) }
        }
        var received: UInt64 = 0
        while received < size {
            let message = try connection.receiveMessage()
            guard case .data(let bytes) = message else {
                throw .protocolViolation(.unexpectedFrame(message.type, expected: "data"))
            }
            guard !bytes.isEmpty else { throw .refused(.badRequest, "put-file \(path): ended after \(received) of \(size) bytes") }
            guard UInt64(bytes.count) <= size - received else {
                throw .refused(.badRequest, "put-file \(path): more than the announced \(size) bytes")
            }
            var offset = 0
            while offset < bytes.count {
                let start = offset
                offset += try systemCall("write \(temporary)") {
                    // SAFETY: `start` is within the buffer, which outlives the call.
                    bytes.withUnsafeBufferPointer { write(fd, $0.baseAddress! + start, $0.count - start) }
                }
            }
            received += UInt64(bytes.count)
        }
        try systemCall("chmod \(temporary)") { Int(fchmod(fd, mode_t(mode & 0o7777))) }
        try systemCall("fsync \(temporary)") { Int(fsync(fd)) }
        try systemCall("rename to \(path)") { Int(rename(temporary, path)) }
        completed = true
        try connection.send(.done)
    }

    static func get(path: String, on connection: Connection) throws(AgentError) {
        let fd = Int32(try systemCall("open \(path)") { Int(agent_open(path, O_RDONLY | O_CLOEXEC, 0)) })
        defer { close(fd) }
        var information = stat()
        try systemCall("stat \(path)") { Int(fstat(fd, &information)) }
        guard information.st_mode & mode_t(S_IFMT) == mode_t(S_IFREG) else {
            throw .refused(.badRequest, "get-file \(path): not a regular file")
        }
        let size = UInt64(information.st_size)
        try connection.send(.fileInfo(mode: UInt32(information.st_mode), size: size))
        var buffer = [UInt8](repeating: 0, count: AgentFrame.dataChunk)
        var sent: UInt64 = 0
        var frame: [UInt8] = []
        frame.reserveCapacity(AgentFrame.dataChunk + AgentFrame.headerSize)
        while sent < size {
            let want = Int(min(UInt64(buffer.count), size - sent))
            let count = try systemCall("read \(path)") {
                // SAFETY: the buffer outlives the call, which writes at most `want` bytes.
                buffer.withUnsafeMutableBufferPointer { read(fd, $0.baseAddress, want) }
            }
            guard count > 0 else { throw .refused(.system, "get-file \(path): the file shrank to \(sent) bytes while being read") }
            frame.removeAll(keepingCapacity: true)
            // SAFETY: read(2) wrote `count` bytes.
            buffer.withUnsafeBufferPointer { AgentFrame.append(.data, body: UnsafeBufferPointer(rebasing: $0[0..<count]), to: &frame) }
            try connection.sendAll(frame)
            sent += UInt64(count)
        }
        try connection.send(.done)
    }
}

/// `info`: what the guest says about itself.
enum GuestInfoReader {
    static func read(agentVersion: String) -> GuestInfo {
        var name = utsname()
        uname(&name)
        let kernel = [field(&name.sysname), field(&name.release), field(&name.version), field(&name.machine)].joined(separator: " ")
        var host = [CChar](repeating: 0, count: 256)
        // SAFETY: gethostname writes at most the buffer's length.
        _ = host.withUnsafeMutableBufferPointer { gethostname($0.baseAddress!, $0.count - 1) }
        let hostname = host.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        let uptime = firstNumber(readText("/proc/uptime"), scale: 1000)
        let meminfo = readText("/proc/meminfo")
        var addressText = [CChar](repeating: 0, count: 8192)
        // SAFETY: the function writes at most the buffer's length, NUL-terminated.
        let length = addressText.withUnsafeMutableBufferPointer { agent_addresses($0.baseAddress, $0.count) }
        let addresses = length > 0
            ? addressText.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.split(separator: "\n").map(String.init)
            : []
        return GuestInfo(kernel: kernel, hostname: hostname, uptimeMilliseconds: uptime,
                         memoryTotalBytes: meminfoValue(meminfo, "MemTotal:") * 1024,
                         memoryAvailableBytes: meminfoValue(meminfo, "MemAvailable:") * 1024,
                         cpus: UInt32(max(agent_cpus(), 1)), addresses: addresses, agentVersion: agentVersion)
    }

    private static func field<T>(_ tuple: inout T) -> String {
        // SAFETY: utsname's fields are NUL-terminated char arrays.
        withUnsafeBytes(of: &tuple) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// The first 64 KiB of a small /proc file.
    static func readText(_ path: String) -> String {
        let fd = agent_open(path, O_RDONLY | O_CLOEXEC, 0)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        // SAFETY: read writes at most the buffer's length.
        let count = buffer.withUnsafeMutableBufferPointer { CAgentSys.read(fd, $0.baseAddress, $0.count) }
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : ""
    }

    /// "12.34 ..." as 12340 with scale 1000.
    static func firstNumber(_ text: String, scale: UInt64) -> UInt64 {
        let first = text.split(separator: " ").first ?? ""
        let parts = first.split(separator: ".")
        let whole = parts.first.flatMap { UInt64($0) } ?? 0
        var fraction: UInt64 = 0
        if parts.count > 1 {
            let digits = parts[1].prefix(3)
            fraction = UInt64(digits) ?? 0
            for _ in digits.count..<3 { fraction *= 10 }
        }
        return whole * scale + fraction * scale / 1000
    }

    static func meminfoValue(_ text: String, _ key: String) -> UInt64 {
        for line in text.split(separator: "\n") where line.hasPrefix(key) {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let value = UInt64(fields[1]) { return value }
        }
        return 0
    }
}
