import Foundation
import Testing
import VhostBackend
import VhostDevices
import VhostSystem
import VhostTooling

/// DPDK testpmd's virtio_user front-end against back-ends built on our framework.
@Suite(.serialized)
struct DPDKVirtioUserTests {
  static func startVirtioUser(_ dir: TemporaryDirectory, socket: String, forward: String, packed: Bool) throws
    -> ManagedProcess?
  {
    guard Peers.require("dpdk-testpmd", package: "dpdk") != nil else { return nil }
    return try startTestpmd(
      vdev: "net_virtio_user0,path=\(socket),queues=1\(packed ? ",packed_vq=1" : "")", forward: forward,
      lcores: "0@1,1@0", filePrefix: "vu\(getpid())-\(UInt32.random(in: 0...UInt32.max))",
      log: dir.file("testpmd.log"), extra: forward == "txonly" ? ["--txpkts=64"] : [])
  }

  static func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
      if condition() { return true }
      usleep(50_000)
    }
    return condition()
  }

  @Test("virtio_user txonly → our net back-end rxonly: our count equals testpmd's", arguments: [false, true])
  func virtioUserTransmits(packed: Bool) throws {
    let dir = try TemporaryDirectory()
    let socket = dir.file("net.sock")
    let device = NetDevice(forwarding: .rxonly)
    var configuration = BackendConfiguration()
    configuration.offerPacked = true
    let backend = try InProcessBackend(device: device, socket: socket, configuration: configuration)
    defer { backend.stop() }
    guard let pmd = try Self.startVirtioUser(dir, socket: socket, forward: "txonly", packed: packed) else { return }
    defer { pmd.stop() }
    let flowing = Self.waitUntil(seconds: 30) { device.received.packets > 50_000 }
    #expect(flowing, "no packets arrived: \(pmd.output.suffix(1500))")
    let t0 = Date()
    pmd.stop()
    #expect(Date().timeIntervalSince(t0) < 2.5, "testpmd did not end on SIGTERM")
    // The session ends when testpmd is gone; by then every published packet was counted.
    #expect(Self.waitUntil(seconds: 10) { backend.server.currentSession == nil })
    let sent = testpmdCounter(pmd.output, "TX-packets")
    #expect(sent != nil && sent! > 0)
    #expect(
      sent == device.received.packets,
      "testpmd sent \(String(describing: sent)), we counted \(device.received.packets)\n\(pmd.output.suffix(2500))")
    #expect(device.received.errors == 0)
  }

  @Test("our net back-end txonly → virtio_user rxonly: testpmd receives the frames", arguments: [false, true])
  func virtioUserReceives(packed: Bool) throws {
    let dir = try TemporaryDirectory()
    let socket = dir.file("net.sock")
    let device = NetDevice(forwarding: .txonly)
    let backend = try InProcessBackend(
      device: device, socket: socket,
      configuration: {
        var c = BackendConfiguration()
        c.poll = true  // txonly generates into every posted buffer as fast as the ring allows
        return c
      }())
    defer { backend.stop() }
    guard let pmd = try Self.startVirtioUser(dir, socket: socket, forward: "rxonly", packed: packed) else { return }
    defer { pmd.stop() }
    let flowing = Self.waitUntil(seconds: 30) { (testpmdCounter(pmd.output, "RX-packets") ?? 0) > 10_000 }
    #expect(flowing, "testpmd received nothing: \(pmd.output.suffix(1500))")
    pmd.stop()
    let received = testpmdCounter(pmd.output, "RX-packets") ?? 0
    #expect(received > 0)
    #expect(received <= device.delivered.packets)
    #expect(device.delivered.drops == 0)
  }
}
