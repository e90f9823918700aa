import Foundation
import Testing
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling

/// Our front-end against DPDK 22.11 testpmd's vhost PMD.
@Suite(.serialized)
struct DPDKTests {
  static func startVhostPMD(_ dir: TemporaryDirectory, forward: String = "rxonly") throws -> (ManagedProcess, String)? {
    guard Peers.require("dpdk-testpmd", package: "dpdk") != nil else { return nil }
    let socket = dir.file("vhost.sock")
    guard
      let pmd = try startTestpmd(
        vdev: "net_vhost0,iface=\(socket),queues=1", forward: forward,
        filePrefix: "vh\(getpid())-\(UInt32.random(in: 0...UInt32.max))",
        log: dir.file("testpmd.log"))
    else { return nil }
    #expect(pmd.waitForFile(socket, milliseconds: 30_000), "testpmd did not create its socket: \(pmd.output)")
    return (pmd, socket)
  }

  /// A 64-byte broadcast frame (without FCS), as testpmd's txonly would send.
  static let frame: [UInt8] = {
    var f = [UInt8](repeating: 0xff, count: 6) + [0x02, 0, 0, 0, 0, 1] + [0x08, 0x00]
    f += (0..<(64 - f.count)).map { UInt8(truncatingIfNeeded: $0) }
    return f
  }()

  @Test("DPDK vhost PMD rxonly: N packets sent by our front-end are N packets counted by testpmd")
  func packetsCounted() throws {
    let dir = try TemporaryDirectory()
    guard let (pmd, socket) = try Self.startVhostPMD(dir) else { return }
    defer { pmd.stop() }
    let connection = try VhostUserConnection.connect(path: socket, retryMilliseconds: 10_000)
    defer { connection.close() }
    let frontend = connection.device()
    let state = try frontend.negotiate()
    #expect(state.protocolFeatures.contains(.mq))
    let device = try DeviceDriver(
      frontend: frontend, features: NetDriver.defaultFeatures, queueCount: 2, queueSize: 256, memorySize: 4 << 20)
    let net = try NetDriver(device: device)
    try net.refillRx()
    #expect(pmd.waitForOutput("Port 0: link state change event", milliseconds: 20_000) || true)
    let n = 100_000
    let sent: Int
    do {
      sent = try net.send(Self.frame, count: n)
    } catch {
      Issue.record(
        "send failed: \(error)\n\(pmd.output.split(separator: "\n").filter { $0.contains("VHOST") || $0.contains("Port") }.suffix(30).joined(separator: "\n"))"
      )
      return
    }
    #expect(sent == n)
    try net.drainTx()
    // testpmd prints its port statistics every second; wait until they show our count.
    let end = Date().addingTimeInterval(20)
    var counted: Int?
    while Date() < end {
      counted = testpmdCounter(pmd.output)
      if counted == n { break }
      usleep(200_000)
    }
    #expect(counted == n, "testpmd counted \(String(describing: counted)) of \(n) packets\n\(pmd.output.suffix(2000))")
  }

  @Test("DPDK vhost PMD: probe decodes net features by name")
  func probe() throws {
    let dir = try TemporaryDirectory()
    guard let (pmd, socket) = try Self.startVhostPMD(dir) else { return }
    defer { pmd.stop() }
    let report = try ProbeReport.collect(path: socket, device: .net)
    let text = report.text
    for name in ["VERSION_1", "NET_MRG_RXBUF", "PROTOCOL_FEATURES", "MQ", "REPLY_ACK", "RING_PACKED"] {
      #expect(text.contains(name), "probe text lacks \(name):\n\(text)")
    }
    #expect(report.queueCount ?? 0 >= 1)
  }
}
