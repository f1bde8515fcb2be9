@testable import SwiftletDaemon
import Testing

@Suite("Network host tools")
struct NetworkHostToolTests {
    @Test("a network start without nft or dnsmasq is a 503 naming the missing tools and their Debian packages")
    func missingTools() {
        func check(installed: Set<String>) -> DaemonError? {
            do throws(DaemonError) {
                try NetworkManager.checkHostTools(for: "default") { installed.contains($0) ? "/usr/sbin/" + $0 : nil }
            } catch { return error }
            return nil
        }
        #expect(check(installed: ["ip", "nft", "dnsmasq"]) == nil)
        let error = check(installed: ["ip"])
        #expect(error?.status == 503)
        #expect(error?.description.contains("cannot start network 'default': nft, dnsmasq not installed (Debian: apt install nftables dnsmasq-base)") == true,
                "\(error?.description ?? "accepted")")
    }
}
