// swift-tools-version: 6.0
// Fuzz targets for Swiftlet's guest- and user-facing parsers, one executable
// each: every folder Sources/Fuzz* is a target (so adding a target is adding
// a folder). Build and run them with scripts/fuzz (it passes the coverage and
// sanitizer flags and links libFuzzer's driver).
import Foundation
import PackageDescription

let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Sources")
let fuzzTargets = ((try? FileManager.default.contentsOfDirectory(atPath: sources.path)) ?? [])
    .filter { $0.hasPrefix("Fuzz") && $0 != "FuzzSupport" }
    .sorted()

let package = Package(
    name: "SwiftletFuzz",
    dependencies: [.package(name: "Swiftlet", path: "..")],
    targets: [
        // Declares libFuzzer's LLVMFuzzerRunDriver (from libclang_rt.fuzzer_no_main).
        .target(name: "CFuzzDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver", .product(name: "SwiftletFuzzable", package: "Swiftlet")]),
    ] + fuzzTargets.map { name in
        .executableTarget(name: name, dependencies: [
            "FuzzSupport", .product(name: "SwiftletFuzzable", package: "Swiftlet"),
        ])
    }
)
