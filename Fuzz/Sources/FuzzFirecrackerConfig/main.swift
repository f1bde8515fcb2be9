import ControlAPI
import FuzzSupport
import VMM

// Firecracker --config-file documents are user input: any bytes parse or
// fail with an APIError naming the problem.
runFuzzer { start, count in
    _ = try? InstanceConfiguration.parseFirecrackerFile(fuzzInput(start, count), base: VMConfiguration(kernelPath: ""))
    return 0
}
