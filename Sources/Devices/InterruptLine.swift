/// An edge-triggered interrupt a device can raise (an irqfd in the VMM, a
/// counter in tests).
public protocol InterruptLine: Sendable {
    func trigger()
}
