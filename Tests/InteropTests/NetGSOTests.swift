import Foundation
import Testing
import VhostBackend
import VhostDevices
import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

/// A TCP frame over IPv4 or IPv6 and the virtio-net header a driver transmits it with as one TSO
/// frame (NEEDS_CSUM on the TCP checksum, which holds the pseudo-header sum, as Linux leaves it).
struct TCPFrame {
  static let macA: [UInt8] = [0x52, 0x54, 0, 0, 1, 0]
  static let macB: [UInt8] = [0x52, 0x54, 0, 0, 1, 1]

  var frame: [UInt8]
  var header: NetHeader
  let network = 14
  let transport: Int
  let headerLength: Int

  init(
    ipv6: Bool, payload: [UInt8], mss: Int = 1448, sequence: UInt32 = 0x1000_fff0, tcpFlags: UInt8 = 0x18,
    ecn: Bool = false, dst: [UInt8] = macB, src: [UInt8] = macA, ipID: UInt16 = 0xfffa
  ) {
    let tcpOptions: [UInt8] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]  // NOP NOP timestamps: 32-byte header
    let tcpLength = 20 + tcpOptions.count + payload.count
    var ip: [UInt8]
    if ipv6 {
      ip = [0x60, 0, 0, 0, UInt8(tcpLength >> 8 & 0xff), UInt8(tcpLength & 0xff), 6, 64]
      ip += [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
      ip += [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    } else {
      let total = 20 + tcpLength
      ip = [0x45, ecn ? 0x02 : 0, UInt8(total >> 8 & 0xff), UInt8(total & 0xff), UInt8(ipID >> 8), UInt8(ipID & 0xff)]
      ip += [0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]
      let c = ~onesComplementSum(ip[...])
      ip[10] = UInt8(c >> 8)
      ip[11] = UInt8(c & 0xff)
    }
    var tcp: [UInt8] = [0x13, 0x88, 0x9c, 0x40]
    tcp += [UInt8(sequence >> 24), UInt8(sequence >> 16 & 0xff), UInt8(sequence >> 8 & 0xff), UInt8(sequence & 0xff)]
    tcp += [0, 0, 0, 1, UInt8((20 + tcpOptions.count) / 4) << 4, tcpFlags | (ecn ? 0x80 : 0), 0xff, 0xff, 0, 0, 0, 0]
    tcp += tcpOptions
    frame = dst + src + (ipv6 ? [0x86, 0xdd] : [0x08, 0x00]) + ip + tcp + payload
    transport = 14 + ip.count
    headerLength = transport + tcp.count
    // The pseudo-header sum in the checksum field.
    let pseudo = Self.pseudoHeader(frame, network: 14, transport: transport, ipv6: ipv6)
    let p = onesComplementSum(pseudo[...])
    frame[transport + 16] = UInt8(p >> 8)
    frame[transport + 17] = UInt8(p & 0xff)
    header = NetHeader()
    header.flags = NetHeader.needsCsum
    header.gsoType = (ipv6 ? NetHeader.gsoTCPv6 : NetHeader.gsoTCPv4) | (ecn ? NetHeader.gsoECN : 0)
    header.gsoSize = UInt16(mss)
    header.hdrLen = UInt16(headerLength)
    header.csumStart = UInt16(transport)
    header.csumOffset = 16
  }

  static func pseudoHeader(_ f: [UInt8], network l3: Int, transport l4: Int, ipv6: Bool) -> [UInt8] {
    let length = (f.count - l4) & 0xffff  // (a frame too long for IP wraps: hostile tests)
    if ipv6 {
      return Array(f[(l3 + 8)..<(l3 + 40)]) + [0, 0, UInt8(length >> 8), UInt8(length & 0xff), 0, 0, 0, 6]
    }
    return Array(f[(l3 + 12)..<(l3 + 20)]) + [0, 6, UInt8(length >> 8), UInt8(length & 0xff)]
  }

  /// Whether the TCP checksum of `f` verifies (computed here from scratch).
  static func tcpChecksumValid(_ f: [UInt8], transport l4: Int, ipv6: Bool) -> Bool {
    onesComplementSum((pseudoHeader(f, network: 14, transport: l4, ipv6: ipv6) + f[l4...])[...]) == 0xffff
  }

  static func be16(_ f: [UInt8], _ at: Int) -> Int { Int(f[at]) << 8 | Int(f[at + 1]) }
  static func be32(_ f: [UInt8], _ at: Int) -> UInt32 {
    UInt32(f[at]) << 24 | UInt32(f[at + 1]) << 16 | UInt32(f[at + 2]) << 8 | UInt32(f[at + 3])
  }
}

/// TCP segmentation offload through the switch, driven by our front-end: TSO frames passed whole to
/// drivers that take them, cut into segments for those that do not, hostile GSO headers refused.
@Suite(.serialized)
struct NetGSOTests {
  static let tsoSender: VirtioFeatures = [
    .version1, NetFeature.mac, NetFeature.csum, NetFeature.hostTso4, NetFeature.hostTso6, NetFeature.hostEcn,
  ]
  static let tsoReceiver: VirtioFeatures = [
    .version1, NetFeature.mac, NetFeature.guestCsum, NetFeature.guestTso4, NetFeature.guestTso6, NetFeature.guestEcn,
    NetFeature.mrgRxbuf,
  ]
  static let broadcast = [UInt8](repeating: 0xff, count: 6)

  /// Two ports: A (the TSO sender) and B with `receiver` features and `buffers` rx buffers of `size`.
  static func pair(receiver: VirtioFeatures, buffers: Int = 128, size: Int = 4096) throws -> (
    NetSwitchHarness, NetTestNIC, NetTestNIC
  ) {
    let h = try NetSwitchHarness(ports: 2)
    let a = try NetTestNIC(path: h.path(0), features: tsoSender, memorySize: 64 << 20)
    try a.postRx(count: 16, size: 2048)
    let b = try NetTestNIC(path: h.path(1), features: receiver)
    try b.postRx(count: buffers, size: size)
    #expect(netWait { h.ports.allSatisfy(\.isUp) }, "ports not up: \(h.netSwitch.report())")
    #expect(a.driver.ackedFeatures.isSuperset(of: tsoSender), "A negotiated \(a.driver.ackedFeatures)")
    #expect(b.driver.ackedFeatures.isSuperset(of: receiver), "B negotiated \(b.driver.ackedFeatures)")
    // B announces itself so A's frames go to it alone.
    try b.send(ethernetFrame(dst: broadcast, src: TCPFrame.macB, payload: [0]))
    #expect(try a.receive(1).count == 1)
    return (h, a, b)
  }

  @Test("offered: HOST/GUEST TSO4, TSO6, ECN in switch and io mode (not UFO); not in rxonly/txonly")
  func offered() {
    let tso: VirtioFeatures = [
      NetFeature.hostTso4, NetFeature.hostTso6, NetFeature.hostEcn, NetFeature.guestTso4, NetFeature.guestTso6,
      NetFeature.guestEcn,
    ]
    #expect(NetDevice(forwarding: .switch).features.isSuperset(of: tso))
    #expect(NetDevice(forwarding: .io).features.isSuperset(of: tso))
    #expect(NetDevice(forwarding: .rxonly).features.intersection(tso).isEmpty)
    #expect(NetDevice(forwarding: .txonly).features.intersection(tso).isEmpty)
    let ufo: VirtioFeatures = [VirtioFeatures(bit: 10), VirtioFeatures(bit: 14)]
    #expect(NetDevice(forwarding: .switch).features.intersection(ufo).isEmpty)
  }

  @Test(
    "TSO pass-through: B with GUEST_TSO4/6 gets the 20 000-byte frame whole, gso fields intact",
    arguments: [false, true])
  func passThrough(ipv6: Bool) throws {
    let (h, a, b) = try Self.pair(receiver: Self.tsoReceiver)
    defer { h.stop() }
    let mss = ipv6 ? 1428 : 1448
    let tcp = TCPFrame(ipv6: ipv6, payload: pattern(20_000, seed: 5), mss: mss)
    try a.send(tcp.frame, header: tcp.header)
    let got = try b.receive(1).first
    let same = got?.1 == tcp.frame
    #expect(same, "frame of \(got?.1.count ?? 0) bytes differs\n\(h.netSwitch.report())")
    let hd = got?.0
    #expect(hd?.gsoType == tcp.header.gsoType)
    #expect(hd.map { Int($0.gsoSize) } == mss)
    #expect(hd?.flags == NetHeader.needsCsum)
    #expect(hd?.csumStart == UInt16(tcp.transport) && hd?.csumOffset == 16)
    #expect(hd?.hdrLen == UInt16(tcp.headerLength))
    #expect(hd.map { Int($0.numBuffers) } == (12 + tcp.frame.count + 4095) / 4096)
    #expect(netWait { h.ports[0].received.packets == 1 && h.ports[1].delivered.packets == 1 })
    #expect(h.ports[0].received.bytes == tcp.frame.count)
    #expect(h.ports[1].delivered.bytes == tcp.frame.count)
    #expect(h.ports[1].segmented.frames == 0)
    #expect(h.ports[0].received.errors == 0 && h.ports[1].delivered.drops == 0)
  }

  struct Case: CustomTestStringConvertible, Sendable {
    let ipv6: Bool
    let guestCsum: Bool
    var testDescription: String { "\(ipv6 ? "IPv6" : "IPv4"), B \(guestCsum ? "with" : "without") GUEST_CSUM" }
  }

  @Test(
    "TSO segmentation: B without GUEST_TSO gets ceil(20000/MSS) valid TCP segments (MSS 1448 IPv4, 1428 IPv6)",
    arguments: [
      Case(ipv6: false, guestCsum: false), Case(ipv6: true, guestCsum: false), Case(ipv6: false, guestCsum: true),
      Case(ipv6: true, guestCsum: true),
    ])
  func segmentation(c: Case) throws {
    var receiver: VirtioFeatures = [.version1, NetFeature.mac]
    if c.guestCsum { receiver.insert(NetFeature.guestCsum) }
    let (h, a, b) = try Self.pair(receiver: receiver, size: 2048)
    defer { h.stop() }
    let payload = pattern(20_000, seed: 11)
    let seq0: UInt32 = 0xffff_f000  // wraps within the frame
    let id0: UInt16 = 0xfffa  // wraps too
    // The largest MSS for MTU 1500 with timestamps: the segments fill the MTU.
    let mss = c.ipv6 ? 1428 : 1448
    // FIN, PSH, ACK: FIN and PSH belong on the last segment only.
    let tcp = TCPFrame(ipv6: c.ipv6, payload: payload, mss: mss, sequence: seq0, tcpFlags: 0x19, ipID: id0)
    try a.send(tcp.frame, header: tcp.header)
    let count = (20_000 + mss - 1) / mss
    #expect(count == (c.ipv6 ? 15 : 14))
    let got = try b.receive(count)
    #expect(got.count == count, "B got \(got.count) segments\n\(h.netSwitch.report())")
    var joined: [UInt8] = []
    let l4 = tcp.transport
    let hl = tcp.headerLength
    for (i, (hd, seg)) in got.enumerated() {
      let take = min(mss, 20_000 - i * mss)
      #expect(seg.count == hl + take, "segment \(i): \(seg.count) bytes")
      guard seg.count == hl + take else { continue }
      #expect(Array(seg[0..<14]) == Array(tcp.frame[0..<14]))
      #expect(hd.gsoType == NetHeader.gsoNone && hd.gsoSize == 0)
      if c.ipv6 {
        #expect(TCPFrame.be16(seg, 18) == seg.count - 54, "IPv6 payload length of segment \(i)")
        #expect(Array(seg[14..<18]) == Array(tcp.frame[14..<18]))
        #expect(Array(seg[20..<54]) == Array(tcp.frame[20..<54]))
      } else {
        #expect(TCPFrame.be16(seg, 16) == seg.count - 14, "IPv4 total length of segment \(i)")
        #expect(TCPFrame.be16(seg, 18) == Int(id0 &+ UInt16(i)), "IPv4 id of segment \(i)")
        #expect(onesComplementSum(seg[14..<34]) == 0xffff, "IPv4 header checksum of segment \(i)")
        #expect(Array(seg[20..<24]) == Array(tcp.frame[20..<24]) && Array(seg[26..<34]) == Array(tcp.frame[26..<34]))
      }
      #expect(TCPFrame.be32(seg, l4 + 4) == seq0 &+ UInt32(i * mss), "sequence of segment \(i)")
      let flags = seg[l4 + 13]
      #expect(flags == (i == count - 1 ? 0x19 : 0x10), "TCP flags of segment \(i): \(flags)")
      // Everything else in the TCP header (ports, ack, offset, window, options) is the original's.
      #expect(Array(seg[l4..<(l4 + 4)]) == Array(tcp.frame[l4..<(l4 + 4)]))
      #expect(Array(seg[(l4 + 8)..<(l4 + 13)]) == Array(tcp.frame[(l4 + 8)..<(l4 + 13)]))
      #expect(Array(seg[(l4 + 14)..<(l4 + 16)]) == Array(tcp.frame[(l4 + 14)..<(l4 + 16)]))
      #expect(Array(seg[(l4 + 18)..<hl]) == Array(tcp.frame[(l4 + 18)..<hl]))
      var s = seg
      if c.guestCsum {
        // Passed on partial: the driver completes it as the spec says (sum from csum_start on).
        #expect(hd.flags == NetHeader.needsCsum && Int(hd.csumStart) == l4 && hd.csumOffset == 16)
        let v = ~onesComplementSum(s[l4...])
        s[l4 + 16] = UInt8(v >> 8)
        s[l4 + 17] = UInt8(v & 0xff)
      } else {
        #expect(hd.flags == 0)
      }
      #expect(TCPFrame.tcpChecksumValid(s, transport: l4, ipv6: c.ipv6), "TCP checksum of segment \(i)")
      joined += seg[hl...]
    }
    let joinedOK = joined == payload
    #expect(joinedOK, "payloads do not concatenate to the original (\(joined.count) bytes)")
    // A counted one frame (as the driver sent it); B delivered the segments.
    #expect(netWait { h.ports[0].received.packets == 1 && h.ports[1].delivered.packets == count })
    #expect(h.ports[0].received.bytes == tcp.frame.count)
    #expect(h.ports[0].received.drops == 0)
    #expect(h.ports[1].segmented == SegmentationCounters(frames: 1, segments: count))
    #expect(h.ports[1].report().contains("gso frames segmented 1 into segments \(count)"))
  }

  @Test("a VLAN-tagged TSO frame is cut into segments that keep the tag, with headers fixed behind it")
  func vlan() throws {
    let (h, a, b) = try Self.pair(receiver: [.version1, NetFeature.mac], size: 2048)
    defer { h.stop() }
    let plain = TCPFrame(ipv6: false, payload: pattern(4000, seed: 8), mss: 1444)
    var frame = Array(plain.frame[0..<12]) + [0x81, 0x00, 0x20, 0x05] + Array(plain.frame[12...])
    var header = plain.header
    header.csumStart += 4
    header.hdrLen += 4
    // gso_size + headers (4 bytes longer) must still fit the MTU's frame (1518 with the tag).
    try a.send(frame, header: header)
    let got = try b.receive(3)
    #expect(got.count == 3, "\(h.netSwitch.report())")
    let l3 = 18
    let l4 = plain.transport + 4
    var joined: [UInt8] = []
    for (i, (_, seg)) in got.enumerated() {
      #expect(Array(seg[0..<18]) == Array(frame[0..<18]), "segment \(i): Ethernet and VLAN headers")
      #expect(TCPFrame.be16(seg, l3 + 2) == seg.count - l3, "segment \(i): IPv4 total length")
      #expect(onesComplementSum(seg[l3..<l4]) == 0xffff, "segment \(i): IPv4 header checksum")
      let pseudo = TCPFrame.pseudoHeader(seg, network: l3, transport: l4, ipv6: false)
      #expect(onesComplementSum((pseudo + seg[l4...])[...]) == 0xffff, "segment \(i): TCP checksum")
      joined += seg[(plain.headerLength + 4)...]
    }
    frame = Array(frame[(plain.headerLength + 4)...])
    #expect(joined == frame)
  }

  @Test("ECN: B with GUEST_TSO4 but not GUEST_ECN gets segments, CWR on the first only; with GUEST_ECN the frame whole")
  func ecn() throws {
    var receiver = Self.tsoReceiver
    receiver.remove(NetFeature.guestEcn)
    let (h, a, b) = try Self.pair(receiver: receiver, size: 2048)
    defer { h.stop() }
    let tcp = TCPFrame(ipv6: false, payload: pattern(5000, seed: 3), ecn: true)
    try a.send(tcp.frame, header: tcp.header)
    let got = try b.receive(4)
    #expect(got.count == 4)
    #expect(got.map { $0.1[tcp.transport + 13] & 0x80 } == [0x80, 0, 0, 0])
    #expect(got.allSatisfy { $0.0.gsoType == NetHeader.gsoNone && $0.0.flags == NetHeader.needsCsum })
    // The same frame without ECN goes to B whole.
    let plain = TCPFrame(ipv6: false, payload: pattern(5000, seed: 3))
    try a.send(plain.frame, header: plain.header)
    let whole = try b.receive(1).first
    let same = whole?.1 == plain.frame
    #expect(same)
    #expect(whole?.0.gsoType == NetHeader.gsoTCPv4)
  }

  @Test(
    "GSO frames for a driver that takes them wait in a byte-bounded queue; overflow is dropped and counted, order kept")
  func largeQueue() throws {
    // Every frame takes exactly 15 of B's 4 KiB buffers (12 + 59 086 or 59 098 bytes), and B posts
    // them in multiples of 15: no frame finds the ring short of buffers halfway.
    func frame(_ i: Int) -> TCPFrame {
      var payload = pattern(59_000, seed: UInt8(i & 0xff))
      payload[0] = UInt8(i & 0xff)
      return TCPFrame(ipv6: i % 2 == 1, payload: payload, mss: 1428)
    }
    // B has room for one frame until it posts more buffers.
    let (h, a, b) = try Self.pair(receiver: Self.tsoReceiver, buffers: 15, size: 4096)
    defer { h.stop() }
    let n = 100
    for i in 0..<n { try a.send(frame(i).frame, header: frame(i).header) }
    #expect(a.drainTx(seconds: 30))
    #expect(netWait { h.ports[0].received.packets == n })
    // 4 MiB hold about 70 frames of 59 KiB, and one went into the posted buffers.
    let dropped = h.ports[0].received.drops
    #expect(dropped > 0 && dropped < n - 50, "dropped \(dropped)\n\(h.netSwitch.report())")
    #expect(netWait { h.ports[1].dropReasons[.rxQueueFull] == dropped }, "\(h.netSwitch.report())")
    try b.postRx(count: 13 * 15, size: 4096)
    let got = try b.receive(n - dropped, seconds: 30)
    #expect(got.count == n - dropped, "\(h.netSwitch.report())")
    let numbers = got.map { f in Int(f.1[f.1[12] == 0x86 ? 86 : 66]) }
    #expect(numbers == numbers.sorted(), "frames out of order: \(numbers)")
    var bad = 0
    for (hd, f) in got {
      let expected = frame(Int(f[f[12] == 0x86 ? 86 : 66]))
      if f != expected.frame || hd.gsoType != expected.header.gsoType { bad += 1 }
    }
    #expect(bad == 0, "\(bad) frames differ")
    // The queue's ring of large frames wraps around many times: 300 more frames, all delivered.
    var received = 0
    bad = 0
    for i in 0..<300 {
      try a.send(frame(1000 + i).frame, header: frame(1000 + i).header)
      if i % 8 == 7 {
        let r = try b.receive(8, seconds: 20)
        for (k, (_, f)) in r.enumerated() where f != frame(1000 + i - 7 + k).frame { bad += 1 }
        received += r.count
      }
    }
    #expect(received == 296 && bad == 0, "received \(received), \(bad) differ\n\(h.netSwitch.report())")
    #expect(h.ports[1].dropReasons[.rxRingExhausted] == nil)
  }

  @Test("hostile GSO frames are dropped and counted by reason; nothing crashes; valid TSO keeps forwarding")
  func hostile() throws {
    let h = try NetSwitchHarness(ports: 3)
    defer { h.stop() }
    // A: TSO4 only (no TSO6, no ECN); B: receives; C: CSUM but no TSO.
    let aFeatures: VirtioFeatures = [.version1, NetFeature.mac, NetFeature.csum, NetFeature.hostTso4]
    let cFeatures: VirtioFeatures = [.version1, NetFeature.mac, NetFeature.csum]
    let nics = try NetSwitchTests.connect(
      h, features: [aFeatures, [.version1, NetFeature.mac, NetFeature.mrgRxbuf], cFeatures])
    let (a, b, c) = (nics[0], nics[1], nics[2])
    try b.send(ethernetFrame(dst: Self.broadcast, src: TCPFrame.macB, payload: [0]))
    _ = try a.receive(1)
    _ = try c.receive(1)
    let good = TCPFrame(ipv6: false, payload: pattern(3000, seed: 1), mss: 1000)
    func variant(_ change: (inout TCPFrame) -> Void) -> TCPFrame {
      var t = good
      change(&t)
      return t
    }
    let l3 = 14
    let l4 = good.transport
    let cases: [(String, TCPFrame, NetDropReason)] = [
      ("gso_size 0", variant { $0.header.gsoSize = 0 }, .badGSO),
      ("hdr_len beyond the frame", variant { $0.header.hdrLen = UInt16($0.frame.count + 1) }, .badGSO),
      ("TCPV6 without HOST_TSO6", variant { $0.header.gsoType = NetHeader.gsoTCPv6 }, .unsupportedGSO),
      ("ECN without HOST_ECN", variant { $0.header.gsoType |= NetHeader.gsoECN }, .unsupportedGSO),
      ("UDP (UFO, not offered)", variant { $0.header.gsoType = NetHeader.gsoUDP }, .unsupportedGSO),
      ("protocol UDP under TCPV4", variant { $0.frame[l3 + 9] = 17 }, .badGSO),
      (
        "IPv6 packet under TCPV4",
        variant {
          $0.frame[12] = 0x86; $0.frame[13] = 0xdd
        }, .badGSO
      ),
      ("IPv4 header length 4", variant { $0.frame[l3] = 0x44 }, .badGSO),
      ("IPv4 header length 15", variant { $0.frame[l3] = 0x4f }, .badGSO),
      ("IPv4 version 6", variant { $0.frame[l3] = 0x65 }, .badGSO),
      ("IPv4 fragment", variant { $0.frame[l3 + 6] = 0x20 }, .badGSO),
      ("TCP data offset 4", variant { $0.frame[l4 + 12] = 0x40 }, .badGSO),
      (
        "TCP data offset beyond the frame",
        variant {
          $0.frame = Array($0.frame.prefix(l4 + 40)); $0.frame[l4 + 12] = 0xf0
        }, .badGSO
      ),
      (
        "no payload",
        variant {
          $0.frame = Array($0.frame.prefix($0.headerLength)); $0.header.hdrLen = 0
        }, .badGSO
      ),
      (
        "headers cut short",
        variant {
          $0.frame = Array($0.frame.prefix(l3 + 10)); $0.header.hdrLen = 0
        }, .badGSO
      ),
      ("no NEEDS_CSUM", variant { $0.header.flags = 0 }, .badGSO),
      ("csum_start not on TCP", variant { $0.header.csumStart = UInt16(l3) }, .badGSO),
      ("csum_offset not the TCP checksum", variant { $0.header.csumOffset = 6 }, .badGSO),
      ("csum_start beyond the frame", variant { $0.header.csumStart = 60000 }, .badGSO),
      ("gso_size larger than the MTU allows", variant { $0.header.gsoSize = 1500 }, .badGSO),
      ("gso_size 1: too many segments", variant { $0.header.gsoSize = 1 }, .badGSO),
      (
        "longer than 65535 + headers", TCPFrame(ipv6: false, payload: pattern(65_600, seed: 2), mss: 1000),
        .oversize
      ),
    ]
    for (_, t, _) in cases { try a.send(t.frame, header: t.header) }
    // Not GSO but larger than the MTU allows (a TSO port's larger limit is for GSO frames only).
    try a.send(ethernetFrame(dst: TCPFrame.macB, src: TCPFrame.macA, payload: pattern(1600, seed: 4)))
    // C did not negotiate HOST_TSO4 (a frame within its MTU: larger ones are oversize for it).
    let small = TCPFrame(ipv6: false, payload: pattern(1000, seed: 1), mss: 500)
    try c.send(small.frame, header: small.header)
    #expect(a.drainTx(seconds: 20) && c.drainTx())
    let total = cases.count + 1
    #expect(
      netWait { h.ports[0].received.errors == total && h.ports[0].dropReasons.values.reduce(0, +) == total },
      "errors \(h.ports[0].received): \(h.ports[0].dropReasons)")
    let reasons = h.ports[0].dropReasons
    for r in [NetDropReason.badGSO, .unsupportedGSO, .oversize] {
      #expect(reasons[r] == cases.filter { $0.2 == r }.count + (r == .oversize ? 1 : 0), "\(r): \(reasons)")
    }
    #expect(netWait { h.ports[2].dropReasons[.unsupportedGSO] == 1 && h.ports[2].received.errors == 1 })
    #expect(try b.receiveAny(seconds: 0.3).isEmpty, "a refused frame reached B")
    // The valid frame still goes through (cut into 3 segments for B) and B still answers A.
    try a.send(good.frame, header: good.header)
    let segments = try b.receive(3)
    #expect(segments.map { $0.1.count } == [1000, 1000, 1000].map { $0 + good.headerLength })
    try b.send(ethernetFrame(dst: TCPFrame.macA, src: TCPFrame.macB, payload: [7]))
    #expect(try a.receive(1).first?.1.last == 7)
    #expect(h.ports[1].received.errors == 0)
  }
}
