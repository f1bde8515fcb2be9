/// Swiftlet's version, one constant for `swiftlet-vmm`, `swiftlet` and
/// `swiftletd` (docs/firecracker-compatibility.md): semantic versioning, at
/// least 0.21.1 because Kata Containers' Firecracker driver refuses older
/// `firecracker --version` answers, and reported by `GET /version` as
/// `firecracker_version`.
public enum SwiftletVersion {
    public static let current = "1.0.0"
}
