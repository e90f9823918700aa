import Foundation
import Testing
import VhostBackend
import VhostDevices
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling
import Virtqueue

/// Waits until `condition` holds or `seconds` pass (polling, no fixed sleeps).
func netWait(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
  let end = Date().addingTimeInterval(seconds)
  while Date() < end {
    if condition() { return true }
    usleep(2_000)
  }
  return condition()
}

/// An Ethernet frame: destination, source, EtherType, payload.
func ethernetFrame(dst: [UInt8], src: [UInt8], type: UInt16 = 0x88b5, payload: [UInt8]) -> [UInt8] {
  dst + src + [UInt8(type >> 8), UInt8(type & 0xff)] + payload
}

/// A `vhost-user net` switch served in this process: one socket per port.
final class NetSwitchHarness: @unchecked Sendable {
  let dir: TemporaryDirectory
  let netSwitch: NetSwitch
  let ports: [NetDevice]
  let servers: [BackendServer]

  init(
    ports count: Int, forwarding: NetSwitch.Forwarding = .switch, poll: Bool = false, pairs: Int = 1,
    mtu: UInt16 = 1500, queuesPerThread: Int = 1
  ) throws {
    dir = try TemporaryDirectory(prefix: "vhost-net")
    netSwitch = NetSwitch(forwarding: forwarding, wakeReceivers: !poll)
    var configuration = BackendConfiguration()
    configuration.poll = poll
    configuration.queuesPerThread = queuesPerThread
    var p: [NetDevice] = []
    var s: [BackendServer] = []
    for i in 0..<count {
      let port = NetDevice(
        switch: netSwitch, name: "port\(i)", pairs: pairs, mac: [0x52, 0x54, 0, 0, 1, UInt8(i)], mtu: mtu)
      let server = port.makeServer(
        listener: try UnixListener(path: dir.file("p\(i).sock")), configuration: configuration)
      server.startInBackground()
      p.append(port)
      s.append(server)
    }
    ports = p
    servers = s
  }

  func path(_ i: Int) -> String { dir.file("p\(i).sock") }

  func stop() {
    for s in servers { s.stopAndWait() }
    netSwitch.shutdown()
  }
}

/// A virtio-net driver on our front-end that builds any chain it is asked to (hostile ones too) and
/// reassembles received packets, mergeable buffers included.
final class NetTestNIC {
  let connection: VhostUserConnection
  let driver: DeviceDriver
  let headerLength: Int
  let mergeable: Bool
  var rx: QueueDriver { driver.queues[0] }
  var tx: QueueDriver { driver.queues[1] }
  var memory: SharedMemory { driver.memory.memory }
  /// Receive buffers by head: offset and length.
  private var posted: [UInt16: (offset: UInt64, length: Int)] = [:]
  private var usedBacklog: [UsedElement] = []
  /// Buffers were posted since the last kick.
  private var unkicked = false
  /// Buffers read and waiting to be posted again. They are posted only once every reaped used
  /// element was consumed: reaping frees the heads, and a head posted again before its used element
  /// was read would be confused with it.
  private var toRepost: [(offset: UInt64, length: Int)] = []
  /// Used elements that came back with length 0 (buffers returned unused).
  private(set) var emptyBuffers = 0

  init(
    path: String, features: VirtioFeatures, queueSize: UInt16 = 256, memorySize: Int = 16 << 20, queueCount: Int = 2
  ) throws {
    var c = FrontendConfiguration()
    c.logger.logLevel = .critical
    connection = try VhostUserConnection.connect(path: path, configuration: c, retryMilliseconds: 5000)
    let frontend = connection.device()
    try frontend.negotiate()
    driver = try DeviceDriver(
      frontend: frontend, features: features, queueCount: queueCount, queueSize: queueSize, memorySize: memorySize)
    headerLength = NetHeader.length(for: driver.ackedFeatures)
    mergeable = driver.ackedFeatures.contains(NetFeature.mrgRxbuf)
  }

  deinit { connection.close() }

  /// Disconnects (the back-end's session for this port ends).
  func close() { connection.close() }

  /// Publishes one chain made of `pieces` (one device-readable descriptor each) and kicks.
  func transmit(pieces: [[UInt8]]) throws {
    let deadline = Date().addingTimeInterval(10)
    while true {
      _ = try tx.ring.reapUsed()
      if tx.ring.freeDescriptors >= pieces.count { break }
      guard Date() < deadline else { throw FrontendError.invalidArgument("tx ring stays full") }
      if tx.call.wait(timeoutMilliseconds: 5) { tx.call.drain() }
    }
    var buffers: [DriverBuffer] = []
    for p in pieces {
      let offset = try driver.allocate(max(p.count, 1))
      try memory.write(p, at: offset)
      buffers.append(
        DriverBuffer(guestAddress: driver.memory.gpa(offset), length: UInt32(p.count), deviceWritable: false))
    }
    try tx.ring.add(buffers)
    try tx.kick.signal()
  }

  /// Sends one control-queue command (class, command, data) on queue 2 (one queue pair) and
  /// returns the device's acknowledgement byte, or nil if the chain came back without one.
  func control(_ cls: UInt8, _ command: UInt8, _ data: [UInt8], ackRoom: Bool = true) throws -> UInt8? {
    let q = driver.queues[2]
    let bytes = [cls, command] + data
    let at = try driver.allocate(bytes.count)
    try memory.write(bytes, at: at)
    let ack = try driver.allocate(1)
    try memory.write([0xee], at: ack)
    var buffers = [
      DriverBuffer(guestAddress: driver.memory.gpa(at), length: UInt32(bytes.count), deviceWritable: false)
    ]
    if ackRoom { buffers.append(DriverBuffer(guestAddress: driver.memory.gpa(ack), length: 1, deviceWritable: true)) }
    let head = try q.ring.add(buffers)
    try q.kick.signal()
    var used: [UsedElement] = []
    guard
      netWait(
        seconds: 10,
        {
          used += (try? q.ring.reapUsed()) ?? []; return !used.isEmpty
        })
    else {
      throw FrontendError.invalidArgument("control command not answered")
    }
    guard used[0].head == head, used[0].length == 1 else { return nil }
    return try memory.read(at: ack, count: 1)[0]
  }

  /// Sends one frame behind a header (zeros unless given).
  func send(_ frame: [UInt8], header: NetHeader = NetHeader()) throws {
    try transmit(pieces: [header.bytes(length: headerLength) + frame])
  }

  /// Waits until the back-end consumed everything transmitted.
  func drainTx(seconds: Double = 10) -> Bool {
    netWait(seconds: seconds) {
      _ = try? tx.ring.reapUsed()
      return tx.ring.freeDescriptors == Int(tx.ring.size)
    }
  }

  /// Posts `count` receive buffers of `size` bytes and kicks.
  func postRx(count: Int, size: Int) throws {
    for _ in 0..<count {
      let offset = try driver.allocate(size)
      try post(offset: offset, length: size)
    }
    try rx.kick.signal()
  }

  private func post(offset: UInt64, length: Int) throws {
    let head = try rx.ring.add([
      DriverBuffer(guestAddress: driver.memory.gpa(offset), length: UInt32(length), deviceWritable: true)
    ])
    posted[head] = (offset, length)
    unkicked = true
  }

  private func nextUsed(deadline: Date) throws -> UsedElement? {
    while usedBacklog.isEmpty {
      for b in toRepost { try post(offset: b.offset, length: b.length) }
      toRepost = []
      usedBacklog += try rx.ring.reapUsed()
      if !usedBacklog.isEmpty { break }
      if Date() >= deadline { return nil }
      if unkicked {
        unkicked = false
        try rx.kick.signal()
      }
      if rx.call.wait(timeoutMilliseconds: 5) { rx.call.drain() }
    }
    return usedBacklog.removeFirst()
  }

  /// Receives `count` packets (header and frame), reposting each buffer after reading it.
  /// Buffers returned with length 0 are counted in `emptyBuffers` and skipped.
  func receive(_ count: Int, seconds: Double = 10) throws -> [(NetHeader, [UInt8])] {
    let deadline = Date().addingTimeInterval(seconds)
    var out: [(NetHeader, [UInt8])] = []
    while out.count < count {
      guard let first = try nextUsed(deadline: deadline) else { break }
      guard let b = posted.removeValue(forKey: first.head) else { continue }
      toRepost.append(b)
      if first.length == 0 {
        emptyBuffers += 1
        continue
      }
      let bytes = try memory.read(at: b.offset, count: Int(first.length))
      let header = NetHeader(bytes: Array(bytes.prefix(headerLength)))
      var frame = Array(bytes[headerLength...])
      if mergeable {
        for _ in 1..<max(Int(header.numBuffers), 1) {
          guard let more = try nextUsed(deadline: deadline), let m = posted.removeValue(forKey: more.head) else {
            break
          }
          frame += try memory.read(at: m.offset, count: Int(more.length))
          toRepost.append(m)
        }
      }
      out.append((header, frame))
    }
    if usedBacklog.isEmpty {
      for b in toRepost { try post(offset: b.offset, length: b.length) }
      toRepost = []
    }
    try rx.kick.signal()
    return out
  }

  /// Whatever arrives within `seconds` (for "nothing arrives" checks).
  func receiveAny(seconds: Double) throws -> [(NetHeader, [UInt8])] { try receive(Int.max, seconds: seconds) }
}

/// The ones' complement sum of `bytes` (0xffff over a region whose checksum is right).
func onesComplementSum(_ bytes: ArraySlice<UInt8>) -> UInt16 {
  var sum: UInt32 = 0
  var i = bytes.startIndex
  while i + 1 < bytes.endIndex {
    sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1])
    i += 2
  }
  if i < bytes.endIndex { sum += UInt32(bytes[i]) << 8 }
  while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
  return UInt16(sum)
}

/// The switch between vhost-user ports, driven by our front-end (interrupt mode: frames for a
/// port are delivered by the switch's waker, not by that port's kicks).
@Suite(.serialized)
struct NetSwitchTests {
  static let features: VirtioFeatures = [.version1, NetFeature.mac]
  static let broadcast = [UInt8](repeating: 0xff, count: 6)

  static func macOf(_ h: NetSwitchHarness, _ i: Int) -> [UInt8] { h.ports[i].mac }

  /// Connects a NIC per port with `features` and waits until every port runs its receive ring.
  static func connect(_ h: NetSwitchHarness, features: [VirtioFeatures], rxBuffers: Int = 128, size: Int = 2048)
    throws -> [NetTestNIC]
  {
    var nics: [NetTestNIC] = []
    for (i, f) in features.enumerated() {
      let nic = try NetTestNIC(path: h.path(i), features: f)
      try nic.postRx(count: rxBuffers, size: size)
      nics.append(nic)
    }
    #expect(netWait { h.ports.allSatisfy(\.isUp) }, "ports not up: \(h.netSwitch.report())")
    return nics
  }

  @Test("learning switch: broadcast floods, learned unicast goes to one port, unknown unicast floods")
  func learning() throws {
    let h = try NetSwitchHarness(ports: 3)
    defer { h.stop() }
    let nics = try Self.connect(h, features: Array(repeating: Self.features, count: 3))
    let (a, b, c) = (nics[0], nics[1], nics[2])
    let macA = Self.macOf(h, 0)
    let macB = Self.macOf(h, 1)
    let macC = Self.macOf(h, 2)

    // B announces itself with a broadcast: A and C get it, B does not get its own frame back.
    try b.send(ethernetFrame(dst: Self.broadcast, src: macB, payload: Array("hello from B".utf8)))
    #expect(try a.receive(1).first?.1.prefix(12) == ArraySlice(Self.broadcast + macB))
    #expect(try c.receive(1).count == 1)
    #expect(h.netSwitch.port(of: macB) == 1)
    try c.send(ethernetFrame(dst: Self.broadcast, src: macC, payload: [1, 2, 3]))
    #expect(try a.receive(1).count == 1)
    #expect(try b.receive(1).count == 1)
    #expect(try b.receiveAny(seconds: 0.2).isEmpty, "B received its own broadcast")

    // 500 unicast frames A → B: all at B, none at C.
    let n = 500
    for i in 0..<n {
      try a.send(ethernetFrame(dst: macB, src: macA, payload: pattern(60 + i % 200, seed: UInt8(i & 0xff))))
    }
    let got = try b.receive(n, seconds: 20)
    #expect(got.count == n, "B got \(got.count) of \(n)\n\(h.netSwitch.report())")
    for (i, (hdr, frame)) in got.enumerated() {
      let expected = ethernetFrame(dst: macB, src: macA, payload: pattern(60 + i % 200, seed: UInt8(i & 0xff)))
      if frame != expected {
        Issue.record("frame \(i) differs (\(frame.count) vs \(expected.count) bytes)")
        break
      }
      #expect(hdr.numBuffers == 1)
    }
    #expect(try c.receiveAny(seconds: 0.3).isEmpty, "C saw unicast frames for B")
    #expect(h.netSwitch.port(of: macA) == 0)

    // Unknown unicast floods to B and C.
    let unknown: [UInt8] = [0x02, 0, 0, 0, 0, 0x99]
    try a.send(ethernetFrame(dst: unknown, src: macA, payload: [9, 9, 9]))
    #expect(try b.receive(1).first?.1.prefix(6) == ArraySlice(unknown))
    #expect(try c.receive(1).first?.1.prefix(6) == ArraySlice(unknown))

    #expect(netWait { h.ports[0].received.packets == n + 1 && h.ports[1].delivered.packets == n + 2 })
    #expect(netWait { h.ports[2].delivered.packets == 2 })
    #expect(h.ports[0].received.errors == 0)
    #expect(h.ports[1].delivered.drops == 0)
  }

  @Test("a port whose front-end went away: its addresses are forgotten, frames for it are dropped, others flow")
  func portGoesAway() throws {
    let h = try NetSwitchHarness(ports: 2)
    defer { h.stop() }
    var nics = try Self.connect(h, features: [Self.features, Self.features])
    let macA = Self.macOf(h, 0)
    let macB = Self.macOf(h, 1)
    try nics[1].send(ethernetFrame(dst: Self.broadcast, src: macB, payload: [1]))
    #expect(try nics[0].receive(1).count == 1)
    #expect(h.netSwitch.port(of: macB) == 1)
    nics.removeLast()  // B disconnects
    #expect(netWait { h.servers[1].currentSession == nil && !h.ports[1].isUp })
    #expect(h.netSwitch.port(of: macB) == nil)
    try nics[0].send(ethernetFrame(dst: macB, src: macA, payload: [2]))
    #expect(netWait { h.ports[0].received.drops == 1 }, "\(h.netSwitch.report())")
    // Reasons are added just after the counters.
    #expect(netWait { h.ports[0].dropReasons[.noDestination] == 1 })
    // B comes back and gets frames again.
    let b = try NetTestNIC(path: h.path(1), features: Self.features)
    try b.postRx(count: 16, size: 2048)
    #expect(netWait { h.ports[1].isUp })
    try nics[0].send(ethernetFrame(dst: macB, src: macA, payload: [3]))
    #expect(try b.receive(1).first?.1.last == 3)
  }

  @Test("io forwarding: port pairs 0↔1 regardless of addresses")
  func ioMode() throws {
    let h = try NetSwitchHarness(ports: 2, forwarding: .io)
    defer { h.stop() }
    let nics = try Self.connect(h, features: [Self.features, Self.features])
    let other: [UInt8] = [0x02, 1, 2, 3, 4, 5]
    for i in 0..<100 { try nics[0].send(ethernetFrame(dst: other, src: other, payload: [UInt8(i)])) }
    for i in 0..<50 { try nics[1].send(ethernetFrame(dst: other, src: other, payload: [UInt8(i)])) }
    #expect(try nics[1].receive(100).map { $0.1.last! } == (0..<100).map { UInt8($0) })
    #expect(try nics[0].receive(50).count == 50)
    // Counters are added once a burst is done, just after its frames were published.
    #expect(
      netWait { h.ports[0].delivered.packets == 50 && h.ports[1].delivered.packets == 100 },
      "delivered \(h.ports[0].delivered.packets), \(h.ports[1].delivered.packets)")
  }

  @Test("hostile driver: each bad chain is dropped and counted by reason; nothing crashes; others keep forwarding")
  func hostile() throws {
    let h = try NetSwitchHarness(ports: 3)
    defer { h.stop() }
    let csumFeatures: VirtioFeatures = [.version1, NetFeature.mac, NetFeature.csum]
    let guestCsum: VirtioFeatures = [.version1, NetFeature.mac, NetFeature.guestCsum]
    // A transmits with CSUM; B neither takes checksum offload nor mergeable buffers (small buffers
    // later); C takes GUEST_CSUM.
    let nics = try Self.connect(h, features: [csumFeatures, Self.features, guestCsum])
    let (a, b, c) = (nics[0], nics[1], nics[2])
    let macA = Self.macOf(h, 0)
    let macB = Self.macOf(h, 1)
    let macC = Self.macOf(h, 2)
    try b.send(ethernetFrame(dst: Self.broadcast, src: macB, payload: [0]))
    try c.send(ethernetFrame(dst: Self.broadcast, src: macC, payload: [0]))
    _ = try a.receive(2)
    _ = try b.receive(1)
    _ = try c.receive(1)
    let zero = NetHeader().bytes(length: 12)
    let frameToB = ethernetFrame(dst: macB, src: macA, payload: pattern(100, seed: 1))

    // 1. Larger than the MTU allows (1500 + 14 + 4).
    try a.send(ethernetFrame(dst: macB, src: macA, payload: pattern(1505, seed: 2)))
    // 2. Shorter than the header; a zero-length descriptor alone; a zero-length one before 10 bytes.
    try a.transmit(pieces: [[1, 2, 3, 4, 5]])
    try a.transmit(pieces: [[]])
    try a.transmit(pieces: [[], Array(zero[0..<10])])
    // 3. A header and no frame (runt).
    try a.transmit(pieces: [zero])
    // 4. csum_start/csum_offset beyond the frame (CVE-2024-11614), and one byte short.
    var bad = NetHeader()
    bad.flags = NetHeader.needsCsum
    bad.csumStart = 60000
    bad.csumOffset = 6
    try a.send(frameToB, header: bad)
    bad.csumStart = UInt16(frameToB.count - 7)
    bad.csumOffset = 6
    try a.send(frameToB, header: bad)
    // 5. A GSO type (no GSO feature is offered).
    var gso = NetHeader()
    gso.gsoType = 1
    gso.gsoSize = 1448
    try a.send(frameToB, header: gso)
    #expect(a.drainTx())
    #expect(
      netWait { h.ports[0].received.errors == 8 && h.ports[0].dropReasons.values.reduce(0, +) == 8 },
      "errors \(h.ports[0].received): \(h.ports[0].dropReasons)\n\(h.netSwitch.report())")
    let reasons = h.ports[0].dropReasons
    #expect(reasons[.oversize] == 1)
    #expect(reasons[.missingHeader] == 3)
    #expect(reasons[.runt] == 1)
    #expect(reasons[.badChecksumOffsets] == 2)
    #expect(reasons[.unsupportedGSO] == 1)
    #expect(try b.receiveAny(seconds: 0.3).isEmpty, "a refused frame reached B")

    // 6. A header split over three descriptors (5 + 4 + 3 bytes), then the frame in two pieces:
    // gathered and forwarded intact.
    try a.transmit(pieces: [
      Array(zero[0..<5]), Array(zero[5..<9]), Array(zero[9..<12]) + frameToB.prefix(7), Array(frameToB.dropFirst(7)),
    ])
    #expect(try b.receive(1).first?.1 == frameToB)

    // 7. A valid partial checksum (UDP over IPv4): B, without GUEST_CSUM, gets it completed; C,
    // with GUEST_CSUM, gets the request passed through.
    var ip: [UInt8] = [0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]
    let udpPayload = pattern(333, seed: 7)
    let udpLength = 8 + udpPayload.count
    ip[2] = UInt8((20 + udpLength) >> 8)
    ip[3] = UInt8((20 + udpLength) & 0xff)
    let udp: [UInt8] = [0x30, 0x39, 0x13, 0x88, UInt8(udpLength >> 8), UInt8(udpLength & 0xff), 0x12, 0x34]
    var partial = NetHeader()
    partial.flags = NetHeader.needsCsum
    partial.csumStart = 34
    partial.csumOffset = 6
    try a.send(
      ethernetFrame(dst: Self.broadcast, src: macA, type: 0x0800, payload: ip + udp + udpPayload), header: partial)
    let atB = try b.receive(1).first
    #expect(atB?.0.flags == 0)
    // The checksum field held the pseudo-header sum (0x1234 here): region + pseudo-header folds to 0xffff.
    let folded = atB.map { f -> UInt16 in
      let s = UInt32(onesComplementSum(f.1[34...])) + 0x1234
      return UInt16(truncatingIfNeeded: (s & 0xffff) + (s >> 16))
    }
    #expect(folded == 0xffff, "checksum not completed for B")
    let atC = try c.receive(1).first
    #expect(atC?.0.flags == NetHeader.needsCsum)
    #expect(atC?.0.csumStart == 34 && atC?.0.csumOffset == 6)
    #expect(atC.map { Array($0.1[40..<42]) } == [0x12, 0x34], "C's frame was changed")

    // 8. Receive buffers too small: B posts 32-byte buffers only (after using up the big ones).
    let c0 = h.ports[1].dropReasons[.rxBufferTooSmall] ?? 0
    b.close()  // B comes back with small buffers
    #expect(netWait { h.servers[1].currentSession == nil })
    let small = try NetTestNIC(path: h.path(1), features: Self.features)
    try small.postRx(count: 8, size: 32)
    #expect(netWait { h.ports[1].isUp })
    // Its address was forgotten when it went away: it announces itself again.
    try small.send(ethernetFrame(dst: Self.broadcast, src: macB, payload: [1]))
    #expect(try a.receive(1).count == 1)
    #expect(try c.receive(1).count == 1)
    try a.send(frameToB)
    #expect(netWait { (h.ports[1].dropReasons[.rxBufferTooSmall] ?? 0) == c0 + 1 }, "\(h.netSwitch.report())")
    _ = try small.receiveAny(seconds: 0.2)
    #expect(small.emptyBuffers == 1)

    // Everything still forwards: A → C, C → A.
    try a.send(ethernetFrame(dst: macC, src: macA, payload: [42]))
    #expect(try c.receive(1).first?.1.last == 42)
    try c.send(ethernetFrame(dst: macA, src: macC, payload: [43]))
    #expect(try a.receive(1).first?.1.last == 43)
    #expect(h.ports[2].received.errors == 0)
  }

  @Test("MRG_RXBUF: a frame larger than one buffer spans several (num_buffers); too few buffers drop it")
  func mergeable() throws {
    let h = try NetSwitchHarness(ports: 2, mtu: 9000)
    defer { h.stop() }
    let mrg: VirtioFeatures = [.version1, NetFeature.mac, NetFeature.mrgRxbuf]
    let a = try NetTestNIC(path: h.path(0), features: Self.features)
    try a.postRx(count: 16, size: 2048)
    let b = try NetTestNIC(path: h.path(1), features: mrg)
    try b.postRx(count: 64, size: 256)
    #expect(netWait { h.ports.allSatisfy(\.isUp) })
    let macA = Self.macOf(h, 0)
    let macB = Self.macOf(h, 1)
    try b.send(ethernetFrame(dst: Self.broadcast, src: macB, payload: [0]))
    _ = try a.receive(1)
    for size in [100, 1000, 4000] {
      let frame = ethernetFrame(dst: macB, src: macA, payload: pattern(size, seed: UInt8(size & 0xff)))
      try a.send(frame)
      let got = try b.receive(1).first
      let firstDiff = got.map { g in zip(g.1, frame).enumerated().first { $0.1.0 != $0.1.1 }?.offset ?? -1 }
      #expect(got?.1.count == frame.count, "frame of \(frame.count) bytes")
      #expect(firstDiff == -1, "frame of \(frame.count) bytes differs at \(String(describing: firstDiff))")
      #expect(got.map { Int($0.0.numBuffers) } == (12 + frame.count + 255) / 256)
    }
    // Only two buffers left for a frame that needs five: both come back unused, the frame is dropped.
    b.close()
    #expect(netWait { h.servers[1].currentSession == nil })
    let c = try NetTestNIC(path: h.path(1), features: mrg)
    try c.postRx(count: 2, size: 256)
    #expect(netWait { h.ports[1].isUp })
    try a.send(ethernetFrame(dst: macB, src: macA, payload: pattern(1100, seed: 3)))
    #expect(netWait { h.ports[1].dropReasons[.rxRingExhausted] == 1 }, "\(h.netSwitch.report())")
    _ = try c.receiveAny(seconds: 0.2)
    #expect(c.emptyBuffers == 2)
  }

  @Test("SEND_RARP: the switch announces the MAC on the other ports; NET_SET_MTU is checked against --mtu")
  func rarpAndMTU() throws {
    let h = try NetSwitchHarness(ports: 2)
    defer { h.stop() }
    let nics = try Self.connect(h, features: [Self.features, Self.features])
    let moved: [UInt8] = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]
    #expect(try nics[0].driver.frontend.migrationDone(mac: moved) == .rarpSent)
    let got = try nics[1].receive(1).first?.1
    #expect(got?.count == 60)
    #expect(got.map { Array($0[0..<14]) } == Self.broadcast + moved + [0x80, 0x35])
    #expect(h.netSwitch.port(of: moved) == 0)

    try nics[0].driver.frontend.netSetMTU(1400)
    #expect(h.ports[0].portMTU == 1400)
    let macB = Self.macOf(h, 1)
    try nics[0].send(ethernetFrame(dst: macB, src: moved, payload: pattern(1400 + 5, seed: 1)))
    try nics[0].send(ethernetFrame(dst: macB, src: moved, payload: pattern(1400, seed: 1)))
    #expect(try nics[1].receive(1).first?.1.count == 1414)
    #expect(netWait { h.ports[0].dropReasons[.oversize] == 1 })
    #expect(h.ports[0].portMTU == 1400)
    // Above --mtu: refused with a non-zero REPLY_ACK; the connection stays and the MTU is unchanged.
    #expect {
      try nics[0].driver.frontend.netSetMTU(9000)
    } throws: { error in
      if case FrontendError.refused = error { return true }
      return false
    }
    #expect(h.ports[0].portMTU == 1400)
    try nics[0].driver.frontend.netSetMTU(1500)
    #expect(h.ports[0].portMTU == 1500)
  }

  @Test(
    "control queue: receive filter (promiscuous, all-multicast, MAC table), MAC_ADDR_SET, ANNOUNCE, MQ; bad commands get ERR"
  )
  func controlQueue() throws {
    let h = try NetSwitchHarness(ports: 2)
    defer { h.stop() }
    let features: VirtioFeatures = [
      .version1, NetFeature.mac, NetFeature.ctrlVq, NetFeature.ctrlRx, NetFeature.ctrlMacAddr,
      NetFeature.guestAnnounce,
    ]
    let a = try NetTestNIC(path: h.path(0), features: features, queueCount: 3)
    let b = try NetTestNIC(path: h.path(1), features: features, queueCount: 3)
    try a.postRx(count: 64, size: 2048)
    try b.postRx(count: 64, size: 2048)
    #expect(netWait { h.ports[0].isUp && h.ports[1].isUp })
    let macA = Self.macOf(h, 0)
    let stranger: [UInt8] = [0x02, 0, 0, 0, 0, 0x99]
    let group: [UInt8] = [0x01, 0, 0x5e, 0, 0, 1]
    /// Sends frames to each address in `dsts` then a broadcast marker; returns the destinations B got.
    func deliveredToB(_ dsts: [[UInt8]]) throws -> [[UInt8]] {
      for (i, d) in dsts.enumerated() { try a.send(ethernetFrame(dst: d, src: macA, payload: [UInt8(i)])) }
      try a.send(ethernetFrame(dst: Self.broadcast, src: macA, payload: [0xff]))
      var got: [[UInt8]] = []
      while true {
        guard let f = try b.receive(1).first?.1 else { return got }
        if Array(f[0..<6]) == Self.broadcast && f[14] == 0xff { return got }
        got.append(Array(f[0..<6]))
      }
    }
    // Promiscuous until the driver says otherwise: an unknown unicast (flooded) and a group reach B.
    #expect(try deliveredToB([stranger, group]) == [stranger, group])
    // Promiscuous off: only B's own address and broadcast.
    #expect(try b.control(0, 0, [0]) == 0)
    #expect(try deliveredToB([stranger, group, Self.macOf(h, 1)]) == [Self.macOf(h, 1)])
    #expect(netWait { h.ports[1].dropReasons[.filtered] == 2 })
    // All-multicast on: the group too.
    #expect(try b.control(0, 1, [1]) == 0)
    #expect(try deliveredToB([stranger, group]) == [group])
    // MAC table: one unicast entry, no multicast entries (all-multicast off again).
    #expect(try b.control(0, 1, [0]) == 0)
    #expect(try b.control(1, 0, [1, 0, 0, 0] + stranger + [0, 0, 0, 0]) == 0)
    #expect(try deliveredToB([stranger, group]) == [stranger])
    // MAC_ADDR_SET: B's address changes; the old one is filtered.
    let newMac: [UInt8] = [0x52, 0x54, 0, 0, 0x77, 0x77]
    #expect(try b.control(1, 1, newMac) == 0)
    #expect(try deliveredToB([newMac, Self.macOf(h, 1)]) == [newMac])
    // ANNOUNCE: a front-end negotiating GUEST_ANNOUNCE lets the guest announce itself instead of
    // sending SEND_RARP; one that sends it anyway has the driver asked too (status bit 2) until it
    // acknowledges.
    #expect(try b.driver.frontend.migrationDone(mac: newMac) == .guestAnnounces)
    try h.ports[1].sendRARP(mac: newMac)
    #expect(h.ports[1].announceRequested)
    let status = try b.driver.frontend.getConfig(offset: 6, size: 2)
    #expect(status == [3, 0])
    #expect(try b.control(3, 0, []) == 0)
    #expect(!h.ports[1].announceRequested)
    #expect(try b.driver.frontend.getConfig(offset: 6, size: 2) == [1, 0])
    // Refused: MQ without VIRTIO_NET_F_MQ, unknown class, wrong sizes, an oversized MAC table, a
    // group address as the port's own, a command without room for the acknowledgement.
    let before = h.ports[1].controlCounters
    #expect(try b.control(4, 0, [1, 0]) == 1)
    #expect(try b.control(9, 0, []) == 1)
    #expect(try b.control(0, 0, [0, 0]) == 1)
    #expect(try b.control(1, 0, [0xff, 0xff, 0, 0]) == 1)
    #expect(try b.control(1, 1, group) == 1)
    #expect(try b.control(0, 0, [1], ackRoom: false) == nil)  // not executed: B stays filtering
    #expect(h.ports[1].controlCounters.commands == before.commands + 6)
    #expect(h.ports[1].controlCounters.errors == before.errors + 6)
    // The port still forwards.
    #expect(try deliveredToB([newMac]) == [newMac])
  }

  @Test("control queue MQ: VQ_PAIRS_SET limits the receive queues in use; out-of-range counts are refused")
  func controlQueueMQ() throws {
    let h = try NetSwitchHarness(ports: 1, pairs: 2)
    defer { h.stop() }
    let port = h.ports[0]
    #expect(port.queueCount == 5)
    #expect(port.executeControlCommand([4, 0, 1, 0]) == 1)  // MQ not negotiated yet
    port.featuresAcknowledged([.version1, NetFeature.ctrlVq, NetFeature.mq])
    #expect(port.queuePairsInUse == 2)
    #expect(port.executeControlCommand([4, 0, 1, 0]) == 0)
    #expect(port.queuePairsInUse == 1)
    #expect(port.executeControlCommand([4, 0, 3, 0]) == 1)
    #expect(port.executeControlCommand([4, 0, 0, 0]) == 1)
    #expect(port.executeControlCommand([4, 0, 2]) == 1)
    #expect(port.queuePairsInUse == 1)
    #expect(port.executeControlCommand([4, 0, 2, 0]) == 0)
    #expect(port.queuePairsInUse == 2)
  }
}

/// `vhost-user bench net`'s generator (NetDriver.generate: bursts of one-descriptor chains,
/// kicks only when asked) against our rxonly back-end.
@Suite(.serialized)
struct NetGeneratorTests {
  @Test("generator → our rxonly back-end (interrupt mode): the back-end counts exactly what the generator saw consumed")
  func generatorCounts() throws {
    let dir = try TemporaryDirectory(prefix: "vhost-net-gen")
    let socket = dir.file("gen.sock")
    let device = NetDevice(forwarding: .rxonly)
    let backend = try InProcessBackend(device: device, socket: socket)
    defer { backend.stop() }
    let connection = try VhostUserConnection.connect(path: socket, retryMilliseconds: 5000)
    defer { connection.close() }
    let frontend = connection.device()
    try frontend.negotiate()
    let driver = try DeviceDriver(
      frontend: frontend, features: NetDriver.defaultFeatures, queueCount: 2, queueSize: 64, memorySize: 4 << 20)
    let net = try NetDriver(device: driver)
    let frame = ethernetFrame(dst: [0x02, 0, 0, 0, 0, 1], src: [0x02, 0, 0, 0, 0, 2], payload: pattern(50, seed: 9))
    let r = try net.generate(frame, seconds: 0.5, burst: 16)
    #expect(r.packets > 1000, "only \(r.packets) frames in \(r.seconds) s")
    #expect(r.kicks > 0)
    // What was published but not yet consumed when the run ended is consumed now.
    try net.drainTx()
    #expect(netWait { device.received.packets == net.sent }, "sent \(net.sent), counted \(device.received)")
    #expect(device.received.bytes == net.sent * frame.count)
    #expect(device.received.errors == 0)
    #expect(r.packets <= net.sent)
  }
}
