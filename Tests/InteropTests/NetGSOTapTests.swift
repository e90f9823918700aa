import Foundation
import Testing
import VhostDevices
import VhostProtocol
import VhostTooling

#if canImport(Glibc)
  import Glibc
#endif

/// A TSO frame from a vhost-user port to a TAP port: written whole when the TAP's offloads are on,
/// cut into segments (each one write the kernel accepts) when they are off.
@Suite(.serialized)
struct NetGSOTapTests {
  @Test("TSO frame to a TAP: one write with offloads, 14 segment writes without", arguments: [true, false])
  func tsoToTap(offloads: Bool) throws {
    guard let ip = Peers.require("ip", package: "iproute2") else { return }
    guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/net/tun") else {
      let message = "TAP devices need root and /dev/net/tun"
      if Peers.required { Issue.record(Comment(rawValue: message)) } else { print("SKIP: \(message)") }
      return
    }
    let h = try NetSwitchHarness(ports: 1)
    defer { h.stop() }
    let name = "vgt\(getpid() % 100_000)\(offloads ? "o" : "s")"
    let tap = try NetTap(name: name, offloads: offloads)
    #expect(tap.offloads == offloads)
    h.netSwitch.add(tap)
    // A TAP that is down refuses writes.
    let (status, out) = try GuestNetTests.run(ip, ["link", "set", name, "up"], log: h.dir.file("ip.log"))
    #expect(status == 0, "ip link set \(name) up: \(out)")
    let a = try NetTestNIC(path: h.path(0), features: NetGSOTests.tsoSender)
    try a.postRx(count: 16, size: 2048)
    #expect(netWait { h.ports[0].isUp })
    // To an address nobody announced: flooded to the TAP.
    let tcp = TCPFrame(ipv6: false, payload: pattern(20_000, seed: 9), dst: [0x02, 0, 0, 0, 0x77, 0x77])
    try a.send(tcp.frame, header: tcp.header)
    #expect(netWait { h.ports[0].received.packets == 1 })
    if offloads {
      #expect(netWait { tap.delivered.packets == 1 }, "\(h.netSwitch.report())")
      #expect(tap.delivered.bytes == tcp.frame.count)
      #expect(tap.segmented.frames == 0)
    } else {
      #expect(netWait { tap.delivered.packets == 14 }, "\(h.netSwitch.report())")
      #expect(tap.delivered.bytes == 20_000 + 14 * tcp.headerLength)
      #expect(tap.segmented == SegmentationCounters(frames: 1, segments: 14))
    }
    #expect(tap.delivered.drops == 0 && tap.dropReasons.isEmpty, "\(h.netSwitch.report())")
    #expect(h.ports[0].received.drops == 0 && h.ports[0].received.errors == 0)
  }
}
