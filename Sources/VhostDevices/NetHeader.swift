import VhostProtocol
import VhostSystem

/// virtio-net device feature bits.
public enum NetFeature {
  public static let csum = VirtioFeatures(bit: 0)
  public static let guestCsum = VirtioFeatures(bit: 1)
  public static let mtu = VirtioFeatures(bit: 3)
  public static let mac = VirtioFeatures(bit: 5)
  /// The driver takes TCP/IPv4 GSO frames (needs GUEST_CSUM).
  public static let guestTso4 = VirtioFeatures(bit: 7)
  /// The driver takes TCP/IPv6 GSO frames (needs GUEST_CSUM).
  public static let guestTso6 = VirtioFeatures(bit: 8)
  /// The driver takes TSO frames with the ECN bit (needs GUEST_TSO4 or GUEST_TSO6).
  public static let guestEcn = VirtioFeatures(bit: 9)
  /// The device takes TCP/IPv4 GSO frames from the driver (needs CSUM).
  public static let hostTso4 = VirtioFeatures(bit: 11)
  /// The device takes TCP/IPv6 GSO frames from the driver (needs CSUM).
  public static let hostTso6 = VirtioFeatures(bit: 12)
  /// The device takes TSO frames with the ECN bit (needs HOST_TSO4 or HOST_TSO6).
  public static let hostEcn = VirtioFeatures(bit: 13)
  public static let mrgRxbuf = VirtioFeatures(bit: 15)
  public static let status = VirtioFeatures(bit: 16)
  public static let ctrlVq = VirtioFeatures(bit: 17)
  public static let ctrlRx = VirtioFeatures(bit: 18)
  public static let guestAnnounce = VirtioFeatures(bit: 21)
  public static let ctrlMacAddr = VirtioFeatures(bit: 23)
  public static let mq = VirtioFeatures(bit: 22)
}

/// Ethernet constants the switch needs.
enum Ethernet {
  static let headerLength = 14
  /// A VLAN tag may follow the addresses.
  static let vlanLength = 4
  /// The largest frame (without FCS) for `mtu`.
  static func maxFrame(mtu: Int) -> Int { mtu + headerLength + vlanLength }
  /// The largest GSO frame: an IP packet of at most 65535 bytes behind an Ethernet header and a VLAN tag.
  static let maxGSOFrame = 65535 + headerLength + vlanLength
}

/// `struct virtio_net_hdr` (with `num_buffers`: `virtio_net_hdr_mrg_rxbuf`), little-endian:
/// flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16, num_buffers u16.
public struct NetHeader: Sendable, Equatable {
  public static let needsCsum: UInt8 = 1
  public static let dataValid: UInt8 = 2
  public static let gsoNone: UInt8 = 0
  public static let gsoTCPv4: UInt8 = 1
  public static let gsoUDP: UInt8 = 3
  public static let gsoTCPv6: UInt8 = 4
  /// Or'ed into gso_type: the TCP segments carry ECN (CWR on the first segment only).
  public static let gsoECN: UInt8 = 0x80

  public var flags: UInt8 = 0
  public var gsoType: UInt8 = 0
  public var hdrLen: UInt16 = 0
  public var gsoSize: UInt16 = 0
  public var csumStart: UInt16 = 0
  public var csumOffset: UInt16 = 0
  public var numBuffers: UInt16 = 0

  public init() {}

  /// The header length for `features`: 12 bytes with VERSION_1 or MRG_RXBUF, else 10.
  public static func length(for features: VirtioFeatures) -> Int {
    features.contains(.version1) || features.contains(NetFeature.mrgRxbuf) ? 12 : 10
  }

  /// Parses the first 10 or 12 bytes of `bytes` (missing bytes read as 0).
  public init(bytes: [UInt8]) {
    func b(_ i: Int) -> UInt8 { i < bytes.count ? bytes[i] : 0 }
    // bounded: UInt8 widens
    func u16(_ at: Int) -> UInt16 { UInt16(b(at)) | UInt16(b(at + 1)) << 8 }
    flags = b(0)
    gsoType = b(1)
    hdrLen = u16(2)
    gsoSize = u16(4)
    csumStart = u16(6)
    csumOffset = u16(8)
    numBuffers = bytes.count >= 12 ? u16(10) : 0
  }

  /// Parses the `length` (10 or 12) bytes at `offset` of `buffer`.
  public init(_ buffer: PacketBuffer, at offset: Int, length: Int) {
    flags = buffer[offset]
    gsoType = buffer[offset + 1]
    hdrLen = buffer.u16le(at: offset + 2)
    gsoSize = buffer.u16le(at: offset + 4)
    csumStart = buffer.u16le(at: offset + 6)
    csumOffset = buffer.u16le(at: offset + 8)
    numBuffers = length >= 12 ? buffer.u16le(at: offset + 10) : 0
  }

  /// Writes the header's first `length` bytes (10 or 12) at `offset` of `buffer`.
  public func write(to buffer: PacketBuffer, at offset: Int, length: Int) {
    buffer[offset] = flags
    buffer[offset + 1] = gsoType
    buffer.setU16le(hdrLen, at: offset + 2)
    buffer.setU16le(gsoSize, at: offset + 4)
    buffer.setU16le(csumStart, at: offset + 6)
    buffer.setU16le(csumOffset, at: offset + 8)
    if length >= 12 { buffer.setU16le(numBuffers, at: offset + 10) }
  }

  /// The header's bytes.
  public func bytes(length: Int) -> [UInt8] {
    func le(_ v: UInt16) -> [UInt8] { [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8)] }
    let all = [flags, gsoType] + le(hdrLen) + le(gsoSize) + le(csumStart) + le(csumOffset) + le(numBuffers)
    return Array(all.prefix(length)) + [UInt8](repeating: 0, count: max(0, length - all.count))
  }

  /// Whether the header asks for segmentation offload.
  public var isGSO: Bool { gsoType != Self.gsoNone }

  /// Why a transmitted frame (`frame` of `buffer`, behind this header) is refused, or nil if it is
  /// fine. `features` are what the sender negotiated (CSUM, HOST_TSO4/6, HOST_ECN); `maxFrame` is
  /// its MTU's frame limit. csum_start/csum_offset must point inside the frame (CVE-2024-11614: an
  /// offset beyond it made DPDK read and write out of bounds); a GSO frame must be a well-formed
  /// TCP frame the sender may send (see `GSOLayout`).
  func problem(buffer: PacketBuffer, frame: Range<Int>, features: VirtioFeatures, maxFrame: Int) -> NetDropReason? {
    if isGSO {
      if frame.count > Ethernet.maxGSOFrame { return .oversize }
      switch GSOLayout.parse(self, buffer, frame, features: features, maxFrame: maxFrame) {
      case .ok: return nil
      case .refused(let r): return r
      }
    }
    if frame.count > maxFrame { return .oversize }
    if flags & Self.needsCsum != 0 {
      guard features.contains(NetFeature.csum) else { return .unnegotiatedChecksum }
      let start = Int(csumStart)
      guard start >= Ethernet.headerLength, start + Int(csumOffset) + 2 <= frame.count else {
        return .badChecksumOffsets
      }
    }
    return nil
  }
}

/// Completes a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) in place on the frame at `frame` of
/// `buffer`: the ones' complement sum of the frame from `start` on, complemented, stored at
/// `start + offset` (where the driver left the pseudo-header sum). The caller checked the offsets.
func completeChecksum(_ buffer: PacketBuffer, frame: Range<Int>, start: Int, offset: Int) {
  let at = frame.lowerBound + start + offset
  var result = ~buffer.onesComplementSum((frame.lowerBound + start)..<frame.upperBound)
  if result == 0 { result = 0xffff }  // CSUM_MANGLED_0, as the kernel's skb_checksum_help
  buffer[at] = UInt8(truncatingIfNeeded: result >> 8)
  buffer[at + 1] = UInt8(truncatingIfNeeded: result)
}

/// Why a frame was dropped (counted per port).
public enum NetDropReason: String, Sendable, CaseIterable, CustomStringConvertible {
  /// The chain is shorter than the virtio-net header (or empty).
  case missingHeader = "missing-header"
  /// Fewer bytes than an Ethernet header after the virtio-net header.
  case runt
  /// A frame larger than the MTU allows.
  case oversize
  /// csum_start/csum_offset outside the frame.
  case badChecksumOffsets = "bad-csum-offsets"
  /// NEEDS_CSUM without VIRTIO_NET_F_CSUM negotiated.
  case unnegotiatedChecksum = "csum-not-negotiated"
  /// A GSO type the sender did not negotiate (TSO without HOST_TSO4/6, ECN without HOST_ECN) or
  /// that is not offered (UFO, USO).
  case unsupportedGSO = "gso"
  /// A malformed GSO frame: gso_size 0 or too large for the MTU, hdr_len beyond the frame, not
  /// Ethernet + IPv4/IPv6 + TCP as its gso_type says, header lengths beyond the frame, no payload,
  /// checksum request not on the TCP checksum, or too many segments.
  case badGSO = "bad-gso"
  /// The driver's receive buffer cannot hold the frame.
  case rxBufferTooSmall = "rx-buffer-too-small"
  /// The receive ring ran out of buffers in the middle of a frame (mergeable buffers).
  case rxRingExhausted = "rx-ring-exhausted"
  /// The port's queue of frames waiting for receive buffers is full.
  case rxQueueFull = "rx-queue-full"
  /// No port takes the frame (unknown port down, or the destination is the sender).
  case noDestination = "no-destination"
  /// The port is not running (no front-end, or its rings are stopped).
  case portDown = "port-down"
  /// A TAP write failed.
  case tapWrite = "tap-write"
  /// The receiving port's filter (promiscuous mode off, MAC table: CTRL_RX) does not take it.
  case filtered

  public var description: String { rawValue }
}
