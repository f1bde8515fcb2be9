import AgentProtocol
import FuzzSupport

// The guest agent's frames (docs/agent.md) from a hostile peer: the agent
// decodes what any host process sends it, the host what a guest's agent
// sends back. Whatever arrives, decoding must end in a frame, a request for
// more bytes, or a typed error: never a crash, and never an allocation sized
// by an unchecked length. A decoded message must encode to a frame that
// decodes to the same message (invalid UTF-8 in strings is replaced).
//
// Input: fed to a FrameDecoder (limit 64 KiB here, so the limit is reached)
// in pieces whose sizes come from the first byte.

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard let first = bytes.first else { return 0 }
    let step = Int(first % 31) + 1
    var decoder = FrameDecoder(maximumPayload: 64 * 1024)
    var offset = 1
    while offset < bytes.count {
        let end = min(bytes.count, offset + step)
        decoder.append(Array(bytes[offset..<end]))
        offset = end
        while true {
            let frame: AgentFrame?
            do {
                frame = try decoder.next()
            } catch {
                return 0
            }
            guard let frame else { break }
            guard let message = try? AgentMessage(frame: frame) else { continue }
            // Strings are decoded as UTF-8 with invalid bytes replaced, so
            // the first re-encoding may differ from the input; from then on
            // encoding and decoding are each other's inverse.
            let again = message.frame
            guard (try? AgentMessage(frame: again)) == message else {
                fatalError("fuzz: \(message.type.name) does not decode to itself")
            }
            guard frame.encoded.count < 64 || again.encoded.count > 0, message.frame.encoded == again.encoded else {
                fatalError("fuzz: \(message.type.name) encodes differently twice")
            }
        }
    }
    return 0
}
