import ControlAPI
import FuzzSupport
import VMM

// Control-API requests are user input: any bytes parse into requests or a
// 4xx, and every parsed request gets an answer from a controller (whose VM
// can never be built here) without crashing. Pipelined requests are parsed
// one after another, as the server does.
let parser = HTTPRequestParser(limits: .init(maximumHeaderBytes: 1024, maximumBodyBytes: 512, maximumHeaderCount: 16))

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    guard let controller = try? InstanceController(
        instanceID: "fuzz", vmmVersion: "0", configuration: InstanceConfiguration(),
        makeMachine: { (configuration) throws(VMMError) -> VirtualMachine in
            throw .invalidConfiguration(field: "fuzz", value: configuration.kernelPath, expected: "no VM while fuzzing")
        }) else { return 0 }
    var buffer = bytes[...]
    var served = 0
    while !buffer.isEmpty && served < 16 {
        guard case let .request(request, consumed)? = try? parser.parse(buffer) else { break }
        precondition(consumed > 0 && consumed <= buffer.count, "consumed \(consumed) of \(buffer.count)")
        let response = controller.handle(request)
        precondition((200..<600).contains(response.status))
        _ = response.serialized(keepAlive: request.keepAlive)
        buffer = buffer.dropFirst(consumed)
        served += 1
    }
    return 0
}
