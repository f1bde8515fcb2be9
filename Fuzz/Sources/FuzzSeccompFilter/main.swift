import FuzzSupport
import HostSystem

// --seccomp-filter files are user input: any bytes parse or fail with a
// SeccompFilterError, never crash (the checks run before any thread installs one).
runFuzzer { start, count in
    _ = try? SeccompFilters.parse(fuzzInput(start, count))
    return 0
}
