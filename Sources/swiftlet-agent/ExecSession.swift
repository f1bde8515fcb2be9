#if canImport(AgentProtocol)
import AgentProtocol
#endif
import CAgentSys

/// Runs one `exec` request: starts the process, then moves stdin, stdout,
/// stderr, signals and window sizes between it and the client from one
/// poll loop, until the process has ended and its output is sent.
final class ExecSession {
    /// Bytes waiting for the socket, and for the process's stdin, each at most this.
    static let pendingLimit = 256 * 1024
    /// How long output may still arrive after the process ended (a background
    /// child can hold the pipe open forever).
    static let drainAfterExitMilliseconds: UInt64 = 100

    private let connection: Connection
    private let request: ExecRequest
    private let busybox: String?
    private var pid: pid_t = 0
    private var pidfd: Int32 = -1
    private var stdinFD: Int32 = -1
    private var stdoutFD: Int32 = -1
    private var stderrFD: Int32 = -1
    /// The pseudo-terminal's master (TTY sessions): stdin and stdout at once.
    private var terminalFD: Int32 = -1
    private var output: [UInt8] = []
    private var outputStart = 0
    private var stdinPending: [UInt8] = []
    private var stdinEnded = false
    private var status: ExitStatus?
    private var exitedAt: UInt64 = 0
    private var readBuffer = [UInt8](repeating: 0, count: AgentFrame.dataChunk)

    init(connection: Connection, request: ExecRequest, busybox: String?) {
        self.connection = connection
        self.request = request
        self.busybox = busybox
    }

    deinit {
        for fd in [pidfd, stdinFD, stdoutFD, stderrFD, terminalFD] where fd >= 0 { close(fd) }
    }

    func run() throws(AgentError) {
        try start()
        try connection.send(.started(pid: UInt32(bitPattern: pid)))
        do {
            try pump()
        } catch {
            // The client is gone or broke the protocol: nobody will read the
            // output, so the process group goes too.
            kill(-pid, SIGKILL)
            if status == nil { reap(blocking: true) }
            throw error
        }
    }

    // MARK: starting

    private func start() throws(AgentError) {
        let environment = mergedEnvironment()
        let path = try resolveProgram(environment: environment)
        var childStdin: Int32 = -1, childStdout: Int32 = -1, childStderr: Int32 = -1
        var terminalName: [CChar]?
        defer {
            for fd in [childStdin, childStdout, childStderr] where fd >= 0 { close(fd) }
        }
        if request.terminal {
            var name = [CChar](repeating: 0, count: 128)
            // SAFETY: the buffer outlives the call, which writes at most its length.
            let master = name.withUnsafeMutableBufferPointer { agent_open_pty($0.baseAddress, $0.count) }
            guard master >= 0 else { throw .system(step: "open a pseudo-terminal", errno: -master) }
            terminalFD = master
            terminalName = name
            _ = agent_set_window_size(master, request.rows, request.columns)
        } else {
            if request.forwardsStdin {
                (childStdin, stdinFD) = try makePipe("a stdin pipe")
            } else {
                childStdin = Int32(try systemCall("open /dev/null") { Int(agent_open("/dev/null", O_RDONLY | O_CLOEXEC, 0)) })
            }
            (stdoutFD, childStdout) = try makePipe("a stdout pipe")
            (stderrFD, childStderr) = try makePipe("a stderr pipe")
        }
        var argv = request.arguments.map { strdup($0) }
        argv.append(nil)
        var envp = environment.map { strdup($0) }
        envp.append(nil)
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var child: pid_t = 0
        let directory = request.workingDirectory.isEmpty ? "/" : request.workingDirectory
        let result = path.withCString { program in
            directory.withCString { folder in
                argv.withUnsafeBufferPointer { arguments in
                    envp.withUnsafeBufferPointer { variables in
                        if let terminalName {
                            // SAFETY: the name is NUL-terminated and outlives the call.
                            return terminalName.withUnsafeBufferPointer { name in
                                agent_spawn(&child, program, arguments.baseAddress, variables.baseAddress, folder, -1, -1, -1, name.baseAddress)
                            }
                        }
                        return agent_spawn(&child, program, arguments.baseAddress, variables.baseAddress, folder,
                                           childStdin, childStdout, childStderr, nil)
                    }
                }
            }
        }
        guard result == 0 else {
            throw .system(step: "start \(request.arguments[0]) in \(directory)", errno: result)
        }
        pid = child
        let descriptor = agent_pidfd_open(child)
        pidfd = descriptor >= 0 ? descriptor : -1
        for fd in [connection.fd, stdinFD, stdoutFD, stderrFD, terminalFD] where fd >= 0 {
            _ = agent_set_nonblocking(fd)
        }
    }

    /// The agent's environment with the request's NAME=value entries replacing or added.
    private func mergedEnvironment() -> [String] {
        var entries: [String] = []
        if let base = agent_environment() {
            var index = 0
            while let entry = base[index] {
                entries.append(String(cString: entry))
                index += 1
            }
        }
        for entry in request.environment {
            let name = entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? entry
            entries.removeAll { $0.hasPrefix(name + "=") }
            entries.append(entry)
        }
        return entries
    }

    /// argv[0] as a path: itself when it has a '/', else the first match in
    /// PATH, else busybox (which runs the applet argv[0] names) when enabled.
    private func resolveProgram(environment: [String]) throws(AgentError) -> String {
        let name = request.arguments[0]
        if name.contains("/") { return name }
        var searchPath = "/bin:/sbin:/usr/bin:/usr/sbin"
        for entry in environment where entry.hasPrefix("PATH=") {
            searchPath = String(entry.dropFirst(5))
        }
        for folder in searchPath.split(separator: ":") {
            let candidate = String(folder) + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        if let busybox, !name.isEmpty, access(busybox, X_OK) == 0 { return busybox }
        throw .refused(.notFound, "\(name): not found in PATH (\(searchPath))")
    }

    private func makePipe(_ what: String) throws(AgentError) -> (read: Int32, write: Int32) {
        var ends: [Int32] = [-1, -1]
        // SAFETY: pipe2 writes two descriptors into the two-element buffer.
        try systemCall("create \(what)") { Int(ends.withUnsafeMutableBufferPointer { pipe2($0.baseAddress, O_CLOEXEC) }) }
        return (ends[0], ends[1])
    }

    // MARK: the loop

    private func pump() throws(AgentError) {
        var clientOpen = true
        while true {
            if let status {
                let outputDone = stdoutFD < 0 && stderrFD < 0 && terminalFD < 0
                if outputDone || agent_monotonic_ms() >= exitedAt + Self.drainAfterExitMilliseconds {
                    appendFrame(.exit, AgentMessage.exit(status).frame.body)
                    try connection.sendAll(Array(output[outputStart...]))
                    return
                }
            }
            var entries: [pollfd] = []
            var roles: [Int] = []
            func watch(_ fd: Int32, _ events: Int32, _ role: Int) {
                guard fd >= 0, events != 0 else { return }
                entries.append(pollfd(fd: fd, events: Int16(events), revents: 0))
                roles.append(role)
            }
            let outputRoom = output.count - outputStart < Self.pendingLimit
            var socketEvents: Int32 = 0
            if clientOpen && stdinPending.count < Self.pendingLimit { socketEvents |= Int32(POLLIN) }
            if output.count > outputStart { socketEvents |= Int32(POLLOUT) }
            watch(connection.fd, socketEvents, 0)
            if outputRoom {
                watch(stdoutFD, Int32(POLLIN), 1)
                watch(stderrFD, Int32(POLLIN), 2)
                watch(terminalFD, Int32(POLLIN), 3)
            }
            if !stdinPending.isEmpty {
                watch(request.terminal ? terminalFD : stdinFD, Int32(POLLOUT), 4)
            }
            if status == nil { watch(pidfd, Int32(POLLIN), 5) }
            let timeout: Int32 = status != nil ? 20 : (pidfd >= 0 ? 1000 : 20)
            let ready = entries.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), timeout) }
            if ready < 0 && agent_errno() != EINTR { throw .system(step: "poll", errno: agent_errno()) }
            for (index, entry) in entries.enumerated() where entry.revents != 0 {
                switch roles[index] {
                case 0:
                    if entry.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 && clientOpen {
                        clientOpen = try connection.fillAvailable()
                        if !clientOpen { throw .closed }
                        try handleClientFrames()
                    }
                    if entry.revents & Int16(POLLOUT) != 0 { try flushOutput() }
                case 1: readOutput(&stdoutFD, .stdout)
                case 2: readOutput(&stderrFD, .stderr)
                case 3: readOutput(&terminalFD, .stdout)
                case 4: writeStdin()
                default: reap(blocking: false)
                }
            }
            if pidfd < 0 && status == nil { reap(blocking: false) }
            if stdinEnded && stdinPending.isEmpty && stdinFD >= 0 {
                close(stdinFD)
                stdinFD = -1
            }
        }
    }

    private func handleClientFrames() throws(AgentError) {
        while true {
            let frame: AgentFrame?
            let message: AgentMessage
            do {
                frame = try connection.decoder.next()
                guard let frame else { return }
                message = try AgentMessage(frame: frame)
            } catch {
                throw .protocolViolation(error)
            }
            switch message {
            case .stdin(let bytes):
                guard request.forwardsStdin, !stdinEnded else {
                    throw .protocolViolation(.unexpectedFrame(.stdin, expected: "no stdin (not requested, or already ended)"))
                }
                if bytes.isEmpty {
                    stdinEnded = true
                    // A terminal has no end of file: ^D is how its reader sees one.
                    if request.terminal { stdinPending.append(4) }
                } else {
                    stdinPending.append(contentsOf: bytes)
                }
            case .signal(let number):
                kill(-pid, number)
            case .resize(let rows, let columns):
                if terminalFD >= 0 { _ = agent_set_window_size(terminalFD, rows, columns) }
            default:
                throw .protocolViolation(.unexpectedFrame(message.type, expected: "stdin, signal or resize"))
            }
        }
    }

    private func readOutput(_ fd: inout Int32, _ type: FrameType) {
        let descriptor = fd
        // SAFETY: the buffer is owned by the session and outlives the call.
        let count = readBuffer.withUnsafeMutableBufferPointer { read(descriptor, $0.baseAddress, $0.count) }
        if count > 0 {
            // SAFETY: read(2) wrote `count` bytes into the buffer.
            readBuffer.withUnsafeBufferPointer { appendFrame(type, UnsafeBufferPointer(rebasing: $0[0..<count])) }
            return
        }
        let code = agent_errno()
        if count < 0 && (code == EAGAIN || code == EINTR) { return }
        // End of file, or EIO from a terminal whose last writer closed.
        close(descriptor)
        fd = -1
    }

    private func writeStdin() {
        let fd = request.terminal ? terminalFD : stdinFD
        guard fd >= 0 else {
            stdinPending.removeAll()
            return
        }
        // SAFETY: the pending bytes outlive the call.
        let written = stdinPending.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count) }
        if written > 0 {
            stdinPending.removeFirst(written)
        } else if written < 0 && agent_errno() != EAGAIN && agent_errno() != EINTR {
            // The process closed its stdin (EPIPE): what is left has no reader.
            stdinPending.removeAll()
            if !request.terminal {
                close(stdinFD)
                stdinFD = -1
            }
        }
    }

    private func flushOutput() throws(AgentError) {
        let pending = output.count - outputStart
        guard pending > 0 else { return }
        let start = outputStart
        let written = output.withUnsafeBufferPointer { buffer in
            // SAFETY: `start` is within the buffer, which outlives the call.
            sendBytes(connection.fd, buffer.baseAddress! + start, pending)
        }
        if written < 0 {
            let code = agent_errno()
            if code == EAGAIN || code == EINTR { return }
            throw .system(step: "write to the client", errno: code)
        }
        outputStart += written
        if outputStart == output.count {
            output.removeAll(keepingCapacity: true)
            outputStart = 0
        } else if outputStart > Self.pendingLimit {
            output.removeFirst(outputStart)
            outputStart = 0
        }
    }

    private func appendFrame(_ type: FrameType, _ body: UnsafeBufferPointer<UInt8>) {
        AgentFrame.append(type, body: body, to: &output)
    }

    private func appendFrame(_ type: FrameType, _ body: [UInt8]) {
        // SAFETY: the body outlives the call.
        body.withUnsafeBufferPointer { AgentFrame.append(type, body: $0, to: &output) }
    }

    private func reap(blocking: Bool) {
        var raw: Int32 = 0
        var result: pid_t
        repeat {
            result = waitpid(pid, &raw, blocking ? 0 : WNOHANG)
        } while result < 0 && agent_errno() == EINTR
        guard result == pid else { return }
        status = agent_signaled(raw) != 0 ? .signaled(agent_term_signal(raw)) : .exited(agent_exit_code(raw))
        exitedAt = agent_monotonic_ms()
        if pidfd >= 0 {
            close(pidfd)
            pidfd = -1
        }
    }
}
