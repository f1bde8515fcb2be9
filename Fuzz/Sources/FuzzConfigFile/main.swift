import ControlAPI
import FuzzSupport
import VMM
import VMMCommand

// Config files are user input: any bytes parse or fail with an error, as a
// Swiftlet `--config` file (VMMError) and as a Firecracker `--config-file`
// (APIError; drives and interfaces with their rate limiters). A parsed
// Firecracker file is also turned into a VM configuration and written back
// as GET /vm/config's document.
let base = VMConfiguration(kernelPath: "", serial: .none)

runFuzzer { start, count in
    let bytes = fuzzInput(start, count)
    _ = try? ConfigurationFile.parse(bytes, path: "fuzz.json")
    if let instance = try? InstanceConfiguration.parseFirecrackerFile(bytes, base: base) {
        _ = instance.json
        _ = try? instance.vmConfiguration()
    }
    return 0
}
