import LeanJSON
import Testing
@testable import MMDS

@Suite("MMDS data store")
struct MetadataStoreTests {
    @Test("placeholder")
    func placeholder() {}
}
