// swift-tools-version: 6.0
// Fuzz targets for Swiftlet's guest- and user-facing parsers, one executable
// each. Build and run them with scripts/fuzz (it passes the coverage and
// sanitizer flags and links libFuzzer's driver).
import PackageDescription

let package = Package(
    name: "SwiftletFuzz",
    dependencies: [.package(name: "Swiftlet", path: "..")],
    targets: [
        // Declares libFuzzer's LLVMFuzzerRunDriver (from libclang_rt.fuzzer_no_main).
        .target(name: "CFuzzDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver"]),
        .executableTarget(name: "FuzzKernelLoader", dependencies: [
            "FuzzSupport", .product(name: "SwiftletFuzzable", package: "Swiftlet"),
        ]),
        .executableTarget(name: "FuzzConfigFile", dependencies: [
            "FuzzSupport", .product(name: "SwiftletFuzzable", package: "Swiftlet"),
        ]),
        .executableTarget(name: "FuzzSerial", dependencies: [
            "FuzzSupport", .product(name: "SwiftletFuzzable", package: "Swiftlet"),
        ]),
        .executableTarget(name: "FuzzHTTPRequest", dependencies: [
            "FuzzSupport", .product(name: "SwiftletFuzzable", package: "Swiftlet"),
        ]),
        .executableTarget(name: "FuzzCommandLine", dependencies: [
            "FuzzSupport", .product(name: "SwiftletFuzzable", package: "Swiftlet"),
        ]),
    ]
)
