import FuzzSupport
import SwiftletClient

// Whatever listens on a VMM's control socket (or the daemon's) controls every
// byte of the response swiftletd and the CLI parse: any bytes, split into any
// pieces, must give a response or an error, never a trap or unbounded memory.
// The first byte picks the piece size the socket hands over (1 to 256 bytes).
runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard let first = bytes.first else { return 0 }
    let pieceSize = Int(first) + 1
    let rest = Array(bytes.dropFirst())
    let pieces = stride(from: 0, to: rest.count, by: pieceSize).map { Array(rest[$0..<min($0 + pieceSize, rest.count)]) }
    for method in ["GET", "HEAD"] {
        if let response = try? UnixHTTPClient.parseResponse(pieces, method: method, maximumBodySize: 4096) {
            precondition(response.body.count <= 4096, "the body cap was exceeded")
        }
    }
    return 0
}
