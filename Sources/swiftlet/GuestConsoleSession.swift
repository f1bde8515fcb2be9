import Foundation
import Glibc

/// A swiftlet-vmm child whose console (its stdout) is copied to this
/// process's stdout line by line, so that `swiftlet run` can react to the
/// guest's markers: `SWIFTLET-EXIT-STATUS=<n>` is remembered, and the
/// snapshot point `SWIFTLET-AWAIT-CMD` is not shown.
final class GuestConsoleSession {
    static let statusMarker = "SWIFTLET-EXIT-STATUS="
    static let awaitMarker = "SWIFTLET-AWAIT-CMD"
    /// Lines that are between swiftlet and the guest only.
    static let hiddenLines = [awaitMarker]

    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var pending = Data()
    /// Bytes of the pending (unfinished) line already copied out.
    private var flushed = 0
    private var inputOpen: Bool
    private(set) var reportedStatus: Int32?

    init(binary: String, arguments: [String], feedsInput: Bool) throws {
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.standardOutput = output
        process.standardError = FileHandle.standardError
        if feedsInput { process.standardInput = input }
        inputOpen = feedsInput
        try process.run()
    }

    var isRunning: Bool { process.isRunning }

    /// Copies console output until `stop` is true for a finished line
    /// (true) or the console ends (false). A partial line (a prompt) shows
    /// at once unless it may still become a hidden line.
    func pump(until stop: (String) -> Bool = { _ in false }) -> Bool {
        while true {
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex...newline]
                let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                if flushed > 0 || !Self.hiddenLines.contains(text) { copyOut(line.dropFirst(flushed)) }
                pending = Data(pending[pending.index(after: newline)...])
                flushed = 0
                if text.hasPrefix(Self.statusMarker), let status = Int32(text.dropFirst(Self.statusMarker.count)) {
                    reportedStatus = status
                }
                if stop(text) { return true }
            }
            if pending.count > flushed {
                let text = String(decoding: pending, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                if flushed > 0 || !Self.hiddenLines.contains(where: { $0.hasPrefix(text) }) {
                    copyOut(pending.dropFirst(flushed))
                    flushed = pending.count
                }
            }
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty {
                copyOut(pending.dropFirst(flushed))
                pending = Data()
                flushed = 0
                return false
            }
            pending.append(chunk)
        }
    }

    private func copyOut(_ bytes: Data) {
        if !bytes.isEmpty { FileHandle.standardOutput.write(bytes) }
    }

    /// Types the command into the guest as guest/init's snapshot mode reads
    /// it: the number of lines of the script, then the script (its terminal
    /// passes bytes through unchanged). Input then closes: the command's own
    /// stdin is not forwarded.
    func sendCommand(_ script: String) {
        guard inputOpen else { return }
        let lines = script.split(separator: "\n", omittingEmptySubsequences: false)
        let text = "\(lines.count)\n" + script + "\n"
        try? input.fileHandleForWriting.write(contentsOf: Data(text.utf8))
        closeInput()
    }

    private func closeInput() {
        guard inputOpen else { return }
        inputOpen = false
        try? input.fileHandleForWriting.close()
    }

    /// Ends the VMM (a run that cannot go on) and waits for it.
    func kill() {
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// Copies console output until the guest reports the command's status,
    /// then stops the VMM (SIGTERM) rather than waiting for the guest's
    /// power-off, and returns that status. For a restored guest, which has
    /// no disks: nothing it did outlives it.
    func runToStatus() -> Int32 {
        guard pump(until: { $0.hasPrefix(Self.statusMarker) }), let reportedStatus else { return finish() }
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGTERM) }
        closeInput()
        // Whatever the guest still prints (its power-off) is not the command's.
        try? output.fileHandleForReading.close()
        process.waitUntilExit()
        return reportedStatus
    }

    /// Waits for the VMM and returns the run's status: the command's as the
    /// guest reported it, else the VMM's own (1 if it exited 0 without one).
    func finish() -> Int32 {
        closeInput()
        process.waitUntilExit()
        if let reportedStatus, process.terminationStatus == 0 { return reportedStatus }
        return process.terminationStatus == 0 ? 1 : process.terminationStatus
    }
}
