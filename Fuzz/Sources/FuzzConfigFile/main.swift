import FuzzSupport
import VMMCommand

// --config files are user input: any bytes parse or fail with a VMMError.
runFuzzer { start, count in
    _ = try? ConfigurationFile.parse(fuzzInput(start, count), path: "fuzz.json")
    return 0
}
