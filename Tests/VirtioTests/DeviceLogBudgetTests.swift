import Testing
import Virtio

@Suite("device log budget")
struct DeviceLogBudgetTests {
    @Test("the first lines pass, the last allowed one says the rest are dropped, then nothing")
    func budget() {
        let budget = DeviceLogBudget(limit: 3)
        #expect(budget.admit("a") == "a" && budget.admit("b") == "b")
        #expect(budget.admit("c") == "c (further messages from this device are not logged)")
        #expect((0..<100).allSatisfy { _ in budget.admit("d") == nil })
        #expect(DeviceLogBudget(limit: 0).admit("x") == nil)
    }
}
