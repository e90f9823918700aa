import Synchronization
import VhostProtocol
import VhostSystem

// TCP segmentation offload (TSO) between switch ports.
//
// A driver that negotiated HOST_TSO4/HOST_TSO6 may transmit one TCP frame of up to 64 KiB with
// gso_type TCPV4/TCPV6 and gso_size (the MSS) in its virtio_net_hdr; the TAP hands us the same
// from the host stack. A destination that takes such frames (a vhost-user port with GUEST_TSO4/6,
// GUEST_ECN for the ECN bit, and GUEST_CSUM; a TAP with offloads on) gets it whole, gso fields
// intact. Any other destination gets it cut here into MSS-sized TCP segments, each with its own
// IP and TCP headers and a partial TCP checksum (NEEDS_CSUM), which the receive path completes for
// ports without GUEST_CSUM. Every offset and length used comes from `GSOLayout.parse`, which
// checks it against the frame.

/// Where a valid TCP GSO frame's headers are (offsets from the start of the frame).
struct GSOLayout: Equatable {
  /// The IP header.
  let network: Int
  /// The TCP header.
  let transport: Int
  /// The end of the TCP header: the payload starts here.
  let headerLength: Int
  let ipv4: Bool
  /// gso_size.
  let segmentSize: Int
  /// Number of segments the payload makes.
  let segments: Int

  /// Most segments one GSO frame may make (an MSS of 32 bytes for a full 64 KiB frame); a frame
  /// needing more is refused (a tiny gso_size would make the sender's thread cut thousands).
  static let maxSegments = 2048

  /// What `parse` found.
  enum Parsed {
    case ok(GSOLayout)
    case refused(NetDropReason)
  }

  /// Checks a GSO frame a sender with `features` (HOST_TSO4/6, HOST_ECN, CSUM) transmitted, whose
  /// frames are limited to `maxFrame` bytes (its MTU): the type is TCPV4 or TCPV6 (ECN optional)
  /// and negotiated; gso_size > 0 and a segment fits the MTU; hdr_len within the frame; Ethernet
  /// (one optional VLAN tag), then IPv4 (IHL ≥ 5, not a fragment, protocol TCP) or IPv6 (next
  /// header TCP) as the type says, then TCP with its data offset ≥ 5 inside the frame, then at
  /// least one payload byte; NEEDS_CSUM on the TCP checksum field.
  static func parse(
    _ header: NetHeader, _ buffer: PacketBuffer, _ frame: Range<Int>, features: VirtioFeatures, maxFrame: Int
  ) -> Parsed {
    let type = header.gsoType & ~NetHeader.gsoECN
    let ipv4: Bool
    switch type {
    case NetHeader.gsoTCPv4:
      guard features.contains(NetFeature.hostTso4) else { return .refused(.unsupportedGSO) }
      ipv4 = true
    case NetHeader.gsoTCPv6:
      guard features.contains(NetFeature.hostTso6) else { return .refused(.unsupportedGSO) }
      ipv4 = false
    default: return .refused(.unsupportedGSO)
    }
    if header.gsoType & NetHeader.gsoECN != 0 && !features.contains(NetFeature.hostEcn) {
      return .refused(.unsupportedGSO)
    }
    guard features.contains(NetFeature.csum) else { return .refused(.unnegotiatedChecksum) }
    guard frame.lowerBound >= 0, frame.upperBound <= buffer.capacity else { return .refused(.badGSO) }
    let length = frame.count
    let base = frame.lowerBound
    guard Int(header.hdrLen) <= length, header.gsoSize > 0 else { return .refused(.badGSO) }
    guard length >= Ethernet.headerLength else { return .refused(.runt) }
    var network = Ethernet.headerLength
    var etherType = buffer.u16be(at: base + 12)
    if etherType == 0x8100 {
      guard length >= Ethernet.headerLength + Ethernet.vlanLength else { return .refused(.badGSO) }
      etherType = buffer.u16be(at: base + 16)
      network += Ethernet.vlanLength
    }
    let ipHeaderLength: Int
    if ipv4 {
      guard etherType == 0x0800, network + 20 <= length else { return .refused(.badGSO) }
      let versionIHL = buffer[base + network]
      ipHeaderLength = Int(versionIHL & 0x0f) * 4
      guard versionIHL >> 4 == 4, ipHeaderLength >= 20, network + ipHeaderLength <= length else {
        return .refused(.badGSO)
      }
      // A fragment (MF or an offset) cannot be cut into TCP segments.
      guard buffer.u16be(at: base + network + 6) & 0x3fff == 0, buffer[base + network + 9] == 6 else {
        return .refused(.badGSO)
      }
    } else {
      ipHeaderLength = 40
      guard etherType == 0x86dd, network + 40 <= length, buffer[base + network] >> 4 == 6,
        buffer[base + network + 6] == 6
      else { return .refused(.badGSO) }
    }
    let transport = network + ipHeaderLength
    guard transport + 20 <= length else { return .refused(.badGSO) }
    let tcpHeaderLength = Int(buffer[base + transport + 12] >> 4) * 4
    guard tcpHeaderLength >= 20, transport + tcpHeaderLength < length else { return .refused(.badGSO) }
    let headerLength = transport + tcpHeaderLength
    let segmentSize = Int(header.gsoSize)
    guard headerLength + segmentSize <= max(maxFrame, Ethernet.maxFrame(mtu: 68)) else { return .refused(.badGSO) }
    // Each segment's IP length field (IPv4 total length, IPv6 payload length) is 16 bits: a
    // segment size the header cannot describe is refused whatever the MTU allows.
    guard headerLength - network + segmentSize <= Int(UInt16.max) else { return .refused(.badGSO) }
    let segments = (length - headerLength + segmentSize - 1) / segmentSize
    guard segments <= maxSegments else { return .refused(.badGSO) }
    guard header.flags & NetHeader.needsCsum != 0, Int(header.csumStart) == transport, header.csumOffset == 16 else {
      return .refused(.badGSO)
    }
    return .ok(
      GSOLayout(
        network: network, transport: transport, headerLength: headerLength, ipv4: ipv4, segmentSize: segmentSize,
        segments: segments))
  }

  /// Whether a destination that negotiated `features` takes a frame with `gsoType` as it is.
  static func receivable(_ gsoType: UInt8, features: VirtioFeatures) -> Bool {
    guard features.contains(NetFeature.guestCsum) else { return false }
    if gsoType & NetHeader.gsoECN != 0 && !features.contains(NetFeature.guestEcn) { return false }
    switch gsoType & ~NetHeader.gsoECN {
    case NetHeader.gsoTCPv4: return features.contains(NetFeature.guestTso4)
    case NetHeader.gsoTCPv6: return features.contains(NetFeature.guestTso6)
    default: return false
    }
  }

  /// The virtio-net header for the frame passed on whole: the gso fields as the sender gave them,
  /// hdr_len the exact length of the Ethernet, IP and TCP headers.
  func passThroughHeader(_ header: NetHeader) -> NetHeader {
    var h = NetHeader()
    h.flags = NetHeader.needsCsum
    h.gsoType = header.gsoType
    h.gsoSize = header.gsoSize
    // bounded: header lengths are at most 18 + 60 + 60 bytes
    h.hdrLen = UInt16(headerLength)
    // bounded: header lengths are at most 18 + 60 + 60 bytes
    h.csumStart = UInt16(transport)
    h.csumOffset = 16
    return h
  }
}

/// Cuts TCP GSO frames into segments.
enum Segmenter {
  /// Each thread's buffer the segments are built in (segmentation runs on the sender's thread).
  private static let scratchBuffers = ThreadLocal<PacketBuffer>()
  static func scratch() -> PacketBuffer {
    if let b = scratchBuffers.value { return b }
    let b = PacketBuffer(capacity: Ethernet.maxGSOFrame + 64)
    scratchBuffers.value = b
    return b
  }

  /// Cuts the GSO frame `frame` of `buffer` (laid out as `layout`, which `GSOLayout.parse` checked
  /// against this frame) into `layout.segments` TCP segments, handing each to `emit` with its
  /// virtio-net header (NEEDS_CSUM on the TCP checksum, which holds the pseudo-header sum). Each
  /// segment has the headers of the original with the IPv4 total length, identification (+1 per
  /// segment) and header checksum, or the IPv6 payload length, and the TCP sequence number fixed;
  /// FIN and PSH only on the last segment, CWR only on the first.
  static func segment(
    _ buffer: PacketBuffer, _ frame: Range<Int>, layout: GSOLayout,
    emit: (NetHeader, PacketBuffer, Range<Int>) -> Void
  ) {
    let out = scratch()
    let base = frame.lowerBound
    let l3 = layout.network
    let l4 = layout.transport
    let hl = layout.headerLength
    out.copy(from: buffer, base..<(base + hl), to: 0)
    let firstID = layout.ipv4 ? buffer.u16be(at: base + l3 + 4) : 0
    let firstSequence = buffer.u32be(at: base + l4 + 4)
    let tcpFlags = buffer[base + l4 + 13]
    // The pseudo-header's addresses do not change between segments.
    let addresses = layout.ipv4 ? (l3 + 12)..<(l3 + 20) : (l3 + 8)..<(l3 + 40)
    let addressSum = out.onesComplementSum(addresses)
    var header = NetHeader()
    header.flags = NetHeader.needsCsum
    // bounded: header lengths are at most 18 + 60 + 60 bytes
    header.csumStart = UInt16(l4)
    header.csumOffset = 16
    var offset = base + hl
    for i in 0..<layout.segments {
      let take = min(layout.segmentSize, frame.upperBound - offset)
      out.copy(from: buffer, offset..<(offset + take), to: hl)
      let tcpLength = hl - l4 + take
      if layout.ipv4 {
        // bounded: parse() refused segments whose IP length exceeds 16 bits
        out.setU16be(UInt16(hl - l3 + take), at: l3 + 2)
        out.setU16be(firstID &+ UInt16(truncatingIfNeeded: i), at: l3 + 4)
        out.setU16be(0, at: l3 + 10)
        out.setU16be(~out.onesComplementSum(l3..<l4), at: l3 + 10)
      } else {
        // bounded: parse() refused segments whose IP length exceeds 16 bits
        out.setU16be(UInt16(tcpLength), at: l3 + 4)
      }
      out.setU32be(firstSequence &+ UInt32(truncatingIfNeeded: i * layout.segmentSize), at: l4 + 4)
      var f = tcpFlags
      if i != layout.segments - 1 { f &= ~0x09 }  // FIN, PSH
      if i != 0 { f &= ~0x80 }  // CWR
      out[l4 + 13] = f
      // Partial checksum: the pseudo-header sum (addresses, protocol 6, TCP length), folded.
      // bounded: UInt16 widens; tcpLength < 2^16
      var sum = UInt32(addressSum) + 6 + UInt32(tcpLength)
      while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
      out.setU16be(UInt16(truncatingIfNeeded: sum), at: l4 + 16)
      emit(header, out, 0..<(hl + take))
      offset += take
    }
  }
}

extension PacketBuffer {
  /// A big-endian u16 at `i` (network byte order).
  // bounded: UInt8 widens
  func u16be(at i: Int) -> UInt16 { UInt16(self[i]) << 8 | UInt16(self[i + 1]) }

  func setU16be(_ v: UInt16, at i: Int) {
    self[i] = UInt8(truncatingIfNeeded: v >> 8)
    self[i + 1] = UInt8(truncatingIfNeeded: v)
  }

  /// A big-endian u32 at `i`.
  // bounded: UInt16 widens
  func u32be(at i: Int) -> UInt32 { UInt32(u16be(at: i)) << 16 | UInt32(u16be(at: i + 2)) }

  func setU32be(_ v: UInt32, at i: Int) {
    setU16be(UInt16(truncatingIfNeeded: v >> 16), at: i)
    setU16be(UInt16(truncatingIfNeeded: v), at: i + 2)
  }
}

extension GSOLayout {
  /// What a frame already checked by its sender is parsed again with (at the destination).
  static let anySender: VirtioFeatures = [
    NetFeature.csum, NetFeature.hostTso4, NetFeature.hostTso6, NetFeature.hostEcn,
  ]

  /// The layout of a GSO frame another port forwarded, taken again at the destination (which
  /// trusts nothing it did not check itself); nil when it is malformed.
  static func forwarded(_ header: NetHeader, _ buffer: PacketBuffer, _ frame: Range<Int>) -> GSOLayout? {
    guard case .ok(let layout) = parse(header, buffer, frame, features: anySender, maxFrame: Ethernet.maxGSOFrame)
    else { return nil }
    return layout
  }
}

/// GSO frames a port's driver could not take whole, and the segments they were cut into.
public struct SegmentationCounters: Sendable, Equatable, CustomStringConvertible {
  public var frames = 0
  public var segments = 0
  public init(frames: Int = 0, segments: Int = 0) {
    self.frames = frames
    self.segments = segments
  }
  public var description: String { "gso frames segmented \(frames) into segments \(segments)" }
}

final class SegmentationCounts: Sendable {
  private let frames = Atomic<Int>(0)
  private let segments = Atomic<Int>(0)

  func add(frames f: Int, segments s: Int) {
    frames.add(f, ordering: .relaxed)
    segments.add(s, ordering: .relaxed)
  }

  var value: SegmentationCounters {
    SegmentationCounters(frames: frames.load(ordering: .relaxed), segments: segments.load(ordering: .relaxed))
  }
}
